"""User code named in configs by import path, e.g. `mypkg.values:prefers_short`.

Jobs build their policy and critic inside Ray actors from plain config, so a user's own
value function or policy backend is named by where to import it from; the module must
be importable where the actor runs (installed, or on PYTHONPATH).
"""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str, field: str) -> Any:
    """The object at `path` ("package.module:attribute", or "package.module.attribute").
    Errors name the config `field` and what was missing."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{field}: expected an import path like 'package.module:name', got {path!r}")
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{field}: expected an import path like 'package.module:name', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"{field}: cannot import module {module_name!r} ({exc})") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"{field}: module {module_name!r} has no attribute {attr!r}") from None
    return obj
