"""Policy backends behind one protocol.

`make_policy("hf", ...)` builds the transformers backend (`HFPolicy`), `make_policy("vllm",
...)` the vLLM one (`VLLMPolicy`, CUDA only); both are imported only when asked for.
"""

from treesearch.policy.base import ParamsArg, Policy, per_state_counts, per_state_params

BACKENDS = ("hf", "vllm")


def make_policy(backend: str = "hf", **kwargs) -> Policy:
    """Build a policy backend by name ("hf" or "vllm"); `kwargs` go to its constructor."""
    if backend == "hf":
        from treesearch.policy.hf import HFPolicy

        return HFPolicy(**kwargs)
    if backend == "vllm":
        from treesearch.policy.vllm import VLLMPolicy

        return VLLMPolicy(**kwargs)
    raise ValueError(f"unknown policy backend {backend!r}; choose one of {BACKENDS}")


__all__ = ["BACKENDS", "ParamsArg", "Policy", "make_policy", "per_state_counts", "per_state_params"]
