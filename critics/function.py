"""A user's plain Python function as a critic: the main extension point.

Four shapes work: sync or async, per state (`fn(state) -> float`) or batched
(`fn(states) -> list[float]`). Pass the function directly as `critic=fn`
(per state is assumed), or decorate it::

    @value_function                      # per state
    def short_is_good(state):
        return 1.0 / (1 + len(state.steps))

    @value_function(batched=True)        # batched, registered as "my_scores"
    async def my_scores(states):
        return [...]

In a job config, name it by import path (built inside each critic actor)::

    critic: {name: python, function: mypkg.values:short_is_good}
    critic: {name: python, function: mypkg.values:make_critic, options: {k: 3}}
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable, Optional, Sequence

import numpy as np

from critics.base import check_values, register_critic
from treesearch.types import State


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


def value_function(
    fn: Optional[Callable] = None, *, batched: bool = False, name: Optional[str] = None
):
    """Decorator: make `fn` a critic and register it under `name` (default: its name)."""

    def wrap(f: Callable) -> FunctionCritic:
        critic = FunctionCritic(f, batched=batched, name=name)
        register_critic(critic.name, lambda: critic)
        return critic

    return wrap(fn) if fn is not None else wrap


@register_critic("python")
def import_critic(function: str, options: Optional[dict] = None, batched: bool = False):
    """The critic at import path `function` (config `critic.name: python`): a value
    function (`batched` says its shape; `@value_function` ones know theirs), a Critic,
    or a Critic class; with `options` (even empty), a factory called with them that
    returns one of those."""
    from critics.base import as_critic
    from treesearch.plugins import import_object

    obj = import_object(function, "critic.function")
    if options is not None or inspect.isclass(obj):  # a factory or a Critic class: build it
        obj = obj(**(options or {}))
    if batched and callable(obj) and not hasattr(obj, "score"):
        obj = FunctionCritic(obj, batched=True)
    return as_critic(obj)
