"""The Critic protocol, value checking, and the registry that configs name critics by."""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - the engine imports this module, not the reverse
    from treesearch.types import State


@runtime_checkable
class Critic(Protocol):
    """Values partial or complete solutions: one float in [0, 1] per state, batched."""

    async def score(self, states: Sequence[State]) -> np.ndarray: ...


def check_values(values: Any, count: int, source: str) -> np.ndarray:
    """Validate a critic's output: `count` finite floats in [0, 1]; else a clear error."""
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"critic {source} returned {type(values).__name__}, not numbers: {exc}") from exc
    if array.shape[0] != count:
        raise ValueError(f"critic {source} returned {array.shape[0]} values for {count} states")
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0) | (array > 1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"critic {source} returned {array[i]!r} for state {i}: values must be in [0, 1]"
        )
    return array


async def score_with_cost(critic: Critic, states: Sequence["State"]) -> tuple[np.ndarray, np.ndarray]:
    """`(values, tokens generated per state)`: critics that generate text (rollouts) report
    their tokens through their own `score_with_cost`; for the others the cost is zero."""
    own = getattr(critic, "score_with_cost", None)
    if own is not None:
        values, tokens = await own(states)
    else:
        values, tokens = await critic.score(states), np.zeros(len(states), dtype=np.int64)
    return np.asarray(values, dtype=np.float64), np.asarray(tokens, dtype=np.int64)


_REGISTRY: dict[str, Callable[..., Critic]] = {}
# Built-in critics whose modules import torch/transformers: registered on first use.
_BUILTIN_MODULES = {
    "self_eval": "critics.self_eval",
    "loglik": "critics.loglik",
    "prm": "critics.prm",
    "rollout": "critics.rollout",
    "verifier": "critics.verifier",
    "weighted": "critics.combine",
    "python": "critics.function",
}


def register_critic(name: str, factory: Callable[..., Critic] | None = None):
    """Register a critic factory (a class or function returning a Critic) under `name`.

    Usable as `register_critic("name", factory)` or as a decorator `@register_critic("name")`.
    """

    def add(f: Callable[..., Critic]):
        _REGISTRY[name] = f
        return f

    return add(factory) if factory is not None else add


def registered_critics() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))


def make_critic(name: str, **kwargs: Any) -> Critic:
    """Build a registered critic by name (as configs do)."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown critic {name!r}; registered: {registered_critics()}")
    return as_critic(_REGISTRY[name](**kwargs))


def as_critic(obj: Any) -> Critic:
    """Accept a Critic, a registered critic's name, or a plain Python value function."""
    if isinstance(obj, str):
        return make_critic(obj)
    score = getattr(obj, "score", None)
    if score is not None and inspect.iscoroutinefunction(score):
        return obj
    if callable(obj):
        from critics.function import FunctionCritic

        return FunctionCritic(obj)
    raise TypeError(
        f"cannot use {obj!r} as a critic: pass a Critic (async score(states)), "
        "a registered critic name, or a function state -> float"
    )
