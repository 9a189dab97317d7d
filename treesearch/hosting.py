"""Where a job's models live: Ray actor pools (`cluster.kind=ray`:
`treesearch.cluster.ModelPools`) or this process (`cluster.kind=inprocess`: `LocalModels`,
for a notebook, a debugger or a machine without Ray). Both are `ModelHosts` and hand the
runner a policy and a critic behind the ordinary protocols, so the searches and their
results are the same (`treesearch.jobs.start_models` picks one).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Protocol, runtime_checkable

from treesearch.components import TARGET, build_critic, build_policy, build_task, has_critic, plain
from treesearch.config import CLUSTER_KINDS, ClusterConfig, with_defaults
from treesearch.types import State

log = logging.getLogger(__name__)


@runtime_checkable
class Replicated(Protocol):
    """A model served by several replicas (a Ray pool): the runner keeps one batcher per
    replica and sends each state to `replica_of(state)` (prefix-cache affinity)."""

    @property
    def replicas(self) -> int: ...

    def replica_of(self, state: State) -> int: ...


@runtime_checkable
class Closeable(Protocol):
    """A backend holding resources beyond its memory (an engine thread, a worker pool)."""

    def shutdown(self) -> None: ...


@dataclass
class Clients:
    """What the runner talks to: the policy, the critic (None without one), and how many
    calls each may have in flight (a Ray pool's replicas)."""

    policy: Any
    critic: Any = None
    policy_concurrency: int = 1
    critic_concurrency: int = 1


@runtime_checkable
class ModelHosts(Protocol):
    """A job's models, kept across jobs (self-training) and reconfigured in place."""

    def configure(self, cfg: Mapping) -> None:
        """Load the models `cfg` names, reusing those whose config is unchanged."""

    def ready(self) -> None:
        """Block until every model is loaded."""

    def clients(self) -> Clients: ...

    def replacements(self) -> dict:
        """Replicas replaced after a crash, per model."""

    def shutdown(self) -> None: ...


def cluster_kind(cfg: Mapping) -> str:
    """`cluster.kind`, checked (the error names the field)."""
    kind = with_defaults(ClusterConfig, cfg.get("cluster"))["kind"]
    if kind not in CLUSTER_KINDS:
        raise ValueError(f"cluster.kind must be one of {CLUSTER_KINDS}, got {kind!r}")
    return kind


def wanted_models(cfg: Mapping) -> tuple[dict, Optional[tuple[dict, dict]]]:
    """What a job's config asks its hosts to load: the policy's spec, and the critic's
    spec with the task's (the task grades for `verifier` and `rollout`), or None when the
    job has no critic. A host reloads a model when its part of this changes."""
    critic_spec = plain(cfg.get("critic"))
    critic = (critic_spec, plain(cfg["task"])) if has_critic(critic_spec) else None
    return plain(cfg["policy"]), critic


SHARED_ENGINE_BACKENDS = ("vllm",)  # policies whose engine scores for the critics (critics.lm.TokenScorer)


def critic_shares_policy(cfg: Mapping) -> bool:
    """Whether the job's critic runs on the policy's own model, built where the policy
    lives: a policy engine that can score (vLLM) with `self_eval`, `loglik` or `checklist` on the
    policy's model, or `rollout` with the policy itself as rollout policy, unless
    `cluster.critic_on_policy_engine` is false. A second copy of the model (on the GPU, a
    second engine) then never loads."""
    policy, critic = plain(cfg["policy"]), plain(cfg.get("critic"))
    if not with_defaults(ClusterConfig, cfg.get("cluster"))["critic_on_policy_engine"]:
        return False
    if policy.get("backend") not in SHARED_ENGINE_BACKENDS or TARGET in critic:
        return False
    if critic.get("name") in ("self_eval", "loglik", "checklist"):
        return critic.get("model") == policy.get("model")
    if critic.get("name") == "rollout":
        return critic.get("rollout_policy") == policy
    return False


def critic_from_specs(wanted: tuple[dict, Optional[dict]], policy: Any = None) -> Any:
    """The critic of `wanted` (its spec and the task's, as `wanted_models` gives them),
    built in this process; `policy`: the policy it runs on, for a shared critic."""
    critic_spec, task_spec = wanted
    return build_critic(critic_spec, build_task(task_spec) if task_spec else None, policy=policy)


def log_shared_critic(shared: Optional[tuple]) -> None:
    """Say where a critic that runs on the policy's engine went (`shared`: its specs)."""
    if shared is not None:
        log.info("critic %s runs on the policy's engine, beside the policy (no second copy of the model)",
                 shared[0].get("name"))


def prepare_process(threads: Optional[int]) -> None:
    """Set-up of a process that hosts a model: torch's thread count, and no download
    progress bars."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def release(backend: Any) -> None:
    """Free a backend's memory before loading another: engines are shut down, cached
    models dropped, and CUDA memory returned."""
    from treesearch.models import clear_model_cache

    if isinstance(backend, Closeable):
        backend.shutdown()
    del backend
    clear_model_cache()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


class LocalModels:
    """The policy and the critic built in this process from the job config. A crash here
    is the job's crash (no replacement, unlike Ray pools); results are the same."""

    def __init__(self, cfg: Mapping):
        self.policy: Any = None
        self.critic: Any = None
        self._policy_spec: Optional[dict] = None
        self._critic_specs: Optional[tuple] = None
        self.configure(cfg)

    def configure(self, cfg: Mapping) -> None:
        policy_spec, wanted = wanted_models(cfg)
        shared = critic_shares_policy(cfg)
        rebuilt = policy_spec != self._policy_spec
        if rebuilt:
            if self._critic_specs is not None and self._critic_specs[1]:
                self._drop("critic")  # it runs on the policy being replaced
                self._critic_specs = None
            self._drop("policy")
            prepare_process(policy_spec.get("threads"))
            self.policy = build_policy(policy_spec)
            self._policy_spec = policy_spec
        if (wanted, shared) != self._critic_specs:
            self._drop("critic")
            if wanted is not None:
                prepare_process(wanted[0].get("threads"))
                self.critic = critic_from_specs(wanted, policy=self.policy if shared else None)
                log_shared_critic(wanted if shared else None)
            self._critic_specs = (wanted, shared)

    def _drop(self, which: str) -> None:
        model = getattr(self, which)
        if model is not None:
            setattr(self, which, None)
            release(model)

    def ready(self) -> None:
        return None

    def clients(self) -> Clients:
        return Clients(self.policy, self.critic)

    def replacements(self) -> dict:
        return {}

    def shutdown(self) -> None:
        self._drop("policy")
        self._drop("critic")
        self._policy_spec = self._critic_specs = None
