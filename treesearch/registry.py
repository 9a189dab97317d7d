"""One registry mechanism for everything configs name: search algorithms, tasks, critics
and policy backends. A `Registry` maps names to factories; built-ins whose modules import
heavy packages are named by import path and imported on first use."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterator, Mapping, Optional, TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name no registry entry has (a KeyError for mapping-style code, a ValueError for
    config errors)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Names -> factories of one `kind` ("algorithm", "task", "critic", "policy backend").

    `lazy` maps built-in names to "module:attribute" paths, imported when first asked for.
    A mapping of the names to their factories (`registry[name]`, `name in registry`,
    iteration over the names); `make(name, **options)` builds one, with a clear error
    for an unknown name.
    """

    def __init__(self, kind: str, entries: Optional[Mapping[str, Callable[..., T]]] = None,
                 lazy: Optional[Mapping[str, str]] = None):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = dict(entries or {})
        self._lazy = dict(lazy or {})

    def register(self, name: str, factory: Optional[Callable[..., T]] = None):
        """`register(name, factory)`, or as a decorator `@registry.register(name)`."""
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a name, got {name!r}")

        def add(f: Callable[..., T]) -> Callable[..., T]:
            self._entries[name] = f
            return f

        return add(factory) if factory is not None else add

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> Callable[..., T]:
        if name not in self._entries and name in self._lazy:
            module, _, attribute = self._lazy[name].partition(":")
            loaded = importlib.import_module(module)  # may register `name` itself
            if name not in self._entries and attribute:
                self._entries[name] = getattr(loaded, attribute)
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r}; choose from {self.names()}")
        return self._entries[name]

    def __setitem__(self, name: str, factory: Callable[..., T]) -> None:
        self.register(name, factory)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def keys(self) -> list[str]:
        return self.names()

    def values(self) -> list[Callable[..., T]]:
        return [self[name] for name in self.names()]

    def items(self) -> list[tuple[str, Callable[..., T]]]:
        return [(name, self[name]) for name in self.names()]

    def make(self, name: str, **options: Any) -> T:
        """The `name` factory called with `options`."""
        return self[name](**options)
