"""Which treesearch is running: the package version, and the git commit when it runs from
a checkout (marked when the engine's sources have local changes). Run folders record it,
so results written by different engines are told apart, and benchmarks report it."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

ENGINE_SOURCES = ("treesearch", "critics")


@functools.lru_cache(maxsize=1)
def engine_version() -> str:
    """`<package version>`, plus ` (<commit>)` from a git checkout, or ` (<commit> with
    local engine changes)` when `treesearch/` or `critics/` differ from that commit."""
    try:
        version = metadata.version("treesearch")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return version
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *ENGINE_SOURCES],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} ({commit}{' with local engine changes' if dirty else ''})"
