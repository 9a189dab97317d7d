"""Policy backends behind one protocol.

`make_policy("hf", ...)` builds the transformers backend (`HFPolicy`), `make_policy("openvino",
...)` the OpenVINO GenAI one (`OpenVINOPolicy`, the fast CPU engine), `make_policy("vllm", ...)`
the vLLM one (`VLLMPolicy`, CUDA only); each is imported only when asked for.
`make_policy("auto", ...)` picks the fastest that runs here: openvino on a CPU-only machine
(when installed), else hf (`resolve_backend`).
`make_policy("python", factory="pkg.module:Factory", ...)` builds a user's own backend
(anything with the Policy protocol's `expand` and `complete`) from the other options.
"""

from treesearch.policy.base import ParamsArg, Policy, per_state_counts, per_state_params
from treesearch.registry import Registry

# options a backend chosen by "auto" accepts besides those the two share
_ONLY = {"openvino": ("weights", "cache_gb", "prefix_caching", "cache_dir")}


def resolve_backend(backend: str) -> str:
    """The backend "auto" stands for here: "openvino" on a machine without CUDA when
    openvino-genai is installed, else "hf". Other names are returned as they are."""
    if backend != "auto":
        return backend
    import importlib.util

    import torch

    if torch.cuda.is_available() or importlib.util.find_spec("openvino_genai") is None:
        return "hf"
    return "openvino"


def python_backend(factory: str = "", **options) -> Policy:
    """The "python" backend: a user's own policy built by `factory` (an import path)
    from the other options."""
    from treesearch.plugins import import_object

    if not factory:
        raise ValueError("policy.factory: the python backend needs an import path, e.g. 'mypkg.engine:MyPolicy'")
    build = import_object(factory, "policy.factory")
    try:
        policy = build(**options)
    except TypeError as exc:
        raise TypeError(
            f"policy.factory {factory!r} rejected the policy options {sorted(options)} ({exc}); "
            "it is called with every policy key except backend and factory"
        ) from exc
    if not isinstance(policy, Policy):
        raise TypeError(f"policy.factory built {policy!r}, which lacks expand()/complete() (the Policy protocol)")
    return policy


# The engines' modules import heavy packages: each is imported when first asked for.
POLICY_BACKENDS: Registry[Policy] = Registry(
    "policy backend",
    {"python": python_backend},
    lazy={
        "hf": "treesearch.policy.hf:HFPolicy",
        "openvino": "treesearch.policy.openvino:OpenVINOPolicy",
        "vllm": "treesearch.policy.vllm:VLLMPolicy",
    },
)
BACKENDS = ("auto", *POLICY_BACKENDS.names())


def make_policy(backend: str = "hf", **kwargs) -> Policy:
    """Build a policy backend by name ("auto", "hf", "openvino", "vllm" or "python"); `kwargs` go to its
    constructor (for "python": `factory`, an import path, and the factory's options)."""
    if backend == "auto":
        backend = resolve_backend(backend)
        stray = [k for k in kwargs if any(k in keys for b, keys in _ONLY.items() if b != backend)]
        if stray:
            raise ValueError(f"policy options {stray} belong to another backend; policy.backend=auto chose {backend!r} here")
    return POLICY_BACKENDS.make(backend, **kwargs)


__all__ = ["BACKENDS", "POLICY_BACKENDS", "ParamsArg", "Policy", "make_policy", "per_state_counts", "per_state_params", "resolve_backend"]
