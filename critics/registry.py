"""The critic registry: names for critic factories (configs build critics by name),
and `as_critic`, which turns what a user passes (a Critic, a registered name, or a plain
value function) into a Critic."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from critics.base import Critic, FunctionCritic

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
        return FunctionCritic(obj)
    raise TypeError(
        f"cannot use {obj!r} as a critic: pass a Critic (async score(states)), "
        "a registered critic name, or a function state -> float"
    )
