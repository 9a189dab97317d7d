"""The Critic protocol, value checking, and `FunctionCritic` (a plain value function as
a Critic). Names for critics live in `critics.registry`."""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - the engine imports this module, not the reverse
    from treesearch.types import State


@runtime_checkable
class Critic(Protocol):
    """Values partial or complete solutions: one float in [0, 1] per state, batched."""

    async def score(self, states: Sequence[State]) -> np.ndarray: ...


@runtime_checkable
class CostedCritic(Critic, Protocol):
    """A critic that generates text to value states (rollouts) and reports the tokens."""

    async def score_with_cost(self, states: Sequence[State]) -> tuple[np.ndarray, np.ndarray]:
        """`(values, tokens generated per state)`."""
        ...


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
    if isinstance(critic, CostedCritic):
        values, tokens = await critic.score_with_cost(states)
    else:
        values, tokens = await critic.score(states), np.zeros(len(states), dtype=np.int64)
    return np.asarray(values, dtype=np.float64), np.asarray(tokens, dtype=np.int64)


def _is_async(fn: Callable) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class FunctionCritic:
    """Wraps a value function as a `Critic`; values are checked to lie in [0, 1]."""

    def __init__(self, fn: Callable, *, batched: bool = False, name: Optional[str] = None):
        if not callable(fn):
            raise TypeError(f"value function must be callable, got {fn!r}")
        self.fn = fn
        self.batched = batched
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.is_async = _is_async(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    async def score(self, states: Sequence[State]) -> np.ndarray:
        states = list(states)
        if self.batched:
            out = self.fn(states)
            if inspect.isawaitable(out):
                out = await out
        elif self.is_async:
            out = await asyncio.gather(*(self.fn(s) for s in states))
        else:
            out = [self.fn(s) for s in states]
        return check_values(out, len(states), repr(self.name))

    def __repr__(self) -> str:
        kind = ("async " if self.is_async else "") + ("batched" if self.batched else "per-state")
        return f"FunctionCritic({self.name}, {kind})"
