"""Building tasks, policies and critics from config sections (plain dicts).

The same functions build components in the driver and inside Ray actors, so a config
means the same thing on a laptop and on a cluster.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Optional

from treesearch.schemas import TaskConfig
from treesearch.tasks import Task, make_task

# the task config's keys that say which problems to load; the others build the task
TASK_LOAD_KEYS = tuple(f.name for f in dataclasses.fields(TaskConfig) if f.name != "name")
TARGET = "_target_"  # Hydra's key for user code: the import path of a class or function
log = logging.getLogger(__name__)


def plain(section: Any) -> dict:
    """A config section (OmegaConf or mapping) as a plain, resolved dict."""
    if section is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(section, DictConfig):
            return OmegaConf.to_container(section, resolve=True)
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    return dict(section)


def build_task(cfg: Mapping) -> Task:
    """A task from its config: `name` plus the task's own options (load options excluded)."""
    spec = plain(cfg)
    name = spec.pop("name")
    for key in TASK_LOAD_KEYS:
        spec.pop(key, None)
    return make_task(name, **spec)


def load_problems(task: Task, cfg: Mapping):
    """The problems a task config names (path/split/offset/limit/skip_bad_rows).

    `offset` skips that many usable problems first, so one file can give disjoint
    train and dev slices (`offset=0, limit=300` and `offset=300, limit=100`)."""
    spec = plain(cfg)
    offset, limit = spec.get("offset") or TaskConfig.offset, spec.get("limit", TaskConfig.limit)
    for name, value in (("offset", offset), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"task.{name} must be an integer >= 0, got {value!r}")
    problems = task.load(
        path=spec.get("path", TaskConfig.path),
        split=spec.get("split", TaskConfig.split),
        limit=None if limit is None else offset + limit,
        skip_bad_rows=bool(spec.get("skip_bad_rows", TaskConfig.skip_bad_rows)),
    )
    if offset == 0:
        return problems
    if offset >= len(problems) and limit != 0:
        raise ValueError(f"task.offset={offset} skips every problem: {spec.get('path') or 'the data'} has {len(problems)}")
    lines = getattr(task, "problem_lines", None)
    if lines and getattr(task, "bad_rows", None):  # bad rows inside the skipped part are not this slice's
        cutoff = lines[problems[offset - 1].id]
        task.bad_rows = [b for b in task.bad_rows if b.line > cutoff]
    return problems[offset:]


def build_policy(cfg: Mapping):
    """A policy backend from `{backend: auto|hf|openvino|vllm, model: ..., ...}`, or the
    user's own from `{_target_: pkg.module.Factory, ...}` (Hydra's `instantiate`: the other
    keys are its arguments)."""
    from treesearch.policy import Policy, make_policy

    spec = plain(cfg)
    if TARGET in spec:
        spec.pop("backend", None)
        policy = _instantiate(spec, "policy")
        if not isinstance(policy, Policy):
            raise TypeError(f"policy._target_ {spec[TARGET]!r} built {policy!r}, which lacks expand()/complete() "
                            "(the Policy protocol)")
        return policy
    backend = spec.pop("backend", "hf")
    if backend == "python":
        _deprecated("policy.backend=python with policy.factory", "policy._target_")
    return make_policy(backend, **spec)


def has_critic(cfg: Optional[Mapping]) -> bool:
    """Whether a critic section names a critic (`name` not null, or a `_target_`)."""
    spec = plain(cfg)
    return spec.get("name") is not None or TARGET in spec


def build_critic(cfg: Optional[Mapping], task: Optional[Task] = None, policy: Any = None):
    """A critic from `{name: ..., ...}`, or the user's own from `{_target_:
    pkg.module.factory, ...}` (a Critic or a value function; `name` is then only a label);
    None when neither is set.

    `verifier` and `rollout` get the task (for grading); `rollout` builds its own policy
    from `rollout_policy` (a policy config). `policy`: the job's policy, for a critic that
    runs on it (`hosting.critic_shares_policy`): `self_eval`, `loglik` and `checklist` score with its
    engine, `rollout` rolls out with it."""
    from critics import make_critic

    spec = plain(cfg)
    if TARGET in spec:
        spec.pop("name", None)
        return _target_critic(spec)
    name = spec.pop("name", None)
    if name is None:
        return None
    if name == "python":
        _deprecated("critic.name=python with critic.function", "critic._target_")
    if name in ("verifier", "rollout"):
        spec["task"] = task
    if name == "rollout":
        rollout_policy = spec.pop("rollout_policy")
        spec["policy"] = policy if policy is not None else build_policy(rollout_policy)
    elif policy is not None:
        spec["model"] = policy
    return make_critic(name, **spec)


def _target_critic(spec: dict):
    """A critic from a `_target_` section: the target may be a Critic itself (e.g. a
    `@value_function`), a value function (`_partial_: true`; `batched: true` for one that
    takes a list of states), or a factory called with the other keys that returns either."""
    import functools

    from hydra.utils import get_object

    from critics import as_critic
    from critics.base import FunctionCritic

    target = spec[TARGET]
    name = str(target).rsplit(".", 1)[-1]
    try:
        located = get_object(target)
    except Exception as err:
        raise ValueError(f"critic._target_={target!r}: {err}") from err
    if _is_critic(located):
        extra = sorted(k for k in spec if k not in (TARGET, "_partial_"))
        if extra:
            raise ValueError(f"critic._target_={target!r} is a critic already; it takes no options, got {extra}")
        return located
    batched = bool(spec.pop("batched", False))
    built = _instantiate(spec, "critic")
    if isinstance(built, functools.partial) or (callable(built) and not _is_critic(built)):
        return FunctionCritic(built, batched=batched, name=name)
    return as_critic(built)


def _is_critic(obj: Any) -> bool:
    import inspect

    return not inspect.isclass(obj) and inspect.iscoroutinefunction(getattr(obj, "score", None))


def _instantiate(spec: dict, section: str) -> Any:
    """`hydra.utils.instantiate` of a `_target_` section; errors name the section."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(spec, _convert_="all")
    except InstantiationException as err:
        raise ValueError(f"{section}._target_={spec[TARGET]!r}: {err}") from err


_warned: set = set()


def _deprecated(old: str, new: str) -> None:
    if old not in _warned:
        _warned.add(old)
        log.warning("%s is deprecated: name your code with %s (Hydra's instantiate) instead", old, new)
