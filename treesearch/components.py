"""Building tasks, policies and critics from config sections (plain dicts).

The same functions build components in the driver and inside Ray actors, so a config
means the same thing on a laptop and on a cluster.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from treesearch.tasks import Task, make_task

TASK_LOAD_KEYS = ("path", "split", "offset", "limit", "skip_bad_rows")


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
    offset, limit = spec.get("offset") or 0, spec.get("limit")
    for name, value in (("offset", offset), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"task.{name} must be an integer >= 0, got {value!r}")
    problems = task.load(
        path=spec.get("path"),
        split=spec.get("split", "test"),
        limit=None if limit is None else offset + limit,
        skip_bad_rows=bool(spec.get("skip_bad_rows", False)),
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
    """A policy backend from `{backend: hf|vllm, model: ..., ...}`."""
    from treesearch.policy import make_policy

    spec = plain(cfg)
    backend = spec.pop("backend", "hf")
    return make_policy(backend, **spec)


def build_critic(cfg: Optional[Mapping], task: Optional[Task] = None):
    """A critic from `{name: ..., ...}`; None when `name` is null.

    `verifier` and `rollout` get the task (for grading); `rollout` builds its own policy
    from `rollout_policy` (a policy config)."""
    from critics import make_critic

    spec = plain(cfg)
    name = spec.pop("name", None)
    if name is None:
        return None
    if name in ("verifier", "rollout"):
        spec["task"] = task
    if name == "rollout":
        spec["policy"] = build_policy(spec.pop("rollout_policy"))
    return make_critic(name, **spec)
