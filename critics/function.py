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

import inspect
from typing import Callable, Optional

from critics.base import FunctionCritic
from critics.registry import as_critic, register_critic


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
    from treesearch.plugins import import_object

    obj = import_object(function, "critic.function")
    if options is not None or inspect.isclass(obj):  # a factory or a Critic class: build it
        obj = obj(**(options or {}))
    if batched and callable(obj) and not hasattr(obj, "score"):
        obj = FunctionCritic(obj, batched=True)
    return as_critic(obj)
