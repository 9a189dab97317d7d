"""The critic registry: names for critic factories (configs build critics by name),
and `as_critic`, which turns what a user passes (a Critic, a registered name, or a plain
value function) into a Critic."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable

from critics.base import Critic, FunctionCritic

if TYPE_CHECKING:  # pragma: no cover
    from treesearch.registry import Registry

# Built-in critics' modules import torch/transformers: each registers itself on first use.
BUILTIN_CRITICS = {
    "self_eval": "critics.self_eval",
    "checklist": "critics.checklist",
    "loglik": "critics.loglik",
    "prm": "critics.prm",
    "rollout": "critics.rollout",
    "verifier": "critics.verifier",
    "weighted": "critics.combine",
    "python": "critics.function",
}
_critics = None


def critic_registry() -> "Registry[Critic]":
    """The critics' `treesearch.registry.Registry` (made on first use: importing
    `treesearch` here at import time would be circular, as the engine imports this module)."""
    global _critics
    if _critics is None:
        from treesearch.registry import Registry

        _critics = Registry("critic", lazy=BUILTIN_CRITICS)
    return _critics


def register_critic(name: str, factory: Callable[..., Critic] | None = None):
    """Register a critic factory (a class or function returning a Critic) under `name`.

    Usable as `register_critic("name", factory)` or as a decorator `@register_critic("name")`.
    """

    return critic_registry().register(name, factory)


def registered_critics() -> list[str]:
    return critic_registry().names()


def make_critic(name: str, **kwargs: Any) -> Critic:
    """Build a registered critic by name (as configs do)."""
    return as_critic(critic_registry().make(name, **kwargs))


def as_critic(obj: Any) -> Critic:
    """Accept a Critic, a registered critic's name, or a plain Python value function."""
    if isinstance(obj, str):
        return make_critic(obj)
    score = getattr(obj, "score", None)
    if score is not None and inspect.iscoroutinefunction(score):
        return obj
    if callable(obj):
        return FunctionCritic(obj)
    raise TypeError(
        f"cannot use {obj!r} as a critic: pass a Critic (async score(states)), "
        "a registered critic name, or a function state -> float"
    )
