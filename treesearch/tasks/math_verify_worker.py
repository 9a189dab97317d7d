"""math-verify in a sandbox: a worker process under an outer timeout.

math-verify times itself out with `signal.alarm`, which only works in a process's main
thread, and a pathological expression can still run for minutes inside C code. So each
comparison runs in a separate worker process (a lazily created, reused, spawn-based
`ProcessPoolExecutor` with one worker, one comparison at a time) under an outer
timeout; a worker that overruns is killed and the pool is recreated on the next call.
Verdicts are cached. A process that cannot spawn workers falls back to math-verify in
its main thread (and refuses from other threads, where nothing safe is left).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from typing import Optional

logger = logging.getLogger(__name__)

_STARTUP_TIMEOUT = 120.0  # seconds for a fresh worker to start and import math-verify
_pool_lock = threading.Lock()
_slot = threading.Semaphore(1)  # one comparison in flight: the timeout measures only it
_pool: Optional[ProcessPoolExecutor] = None
_pool_pid: Optional[int] = None
_pool_failure: Optional[tuple[int, str]] = None  # (pid, why): do not retry a failed start


class _PoolUnavailable(RuntimeError):
    pass


class _Overrun(Exception):
    pass


def _as_math(text: str) -> str:
    """math-verify only reads LaTeX inside delimiters: wrap bare answers in $...$."""
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return text
    return f"${text}$"


def _verify_here(pred: str, gold: str, inner_timeout: Optional[int]) -> bool:
    """math-verify's comparison in this process (`inner_timeout` uses signal.alarm)."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(_as_math(gold), parsing_timeout=inner_timeout)
        pred_parsed = parse(_as_math(pred), parsing_timeout=inner_timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=inner_timeout))
    except Exception:  # math-verify raises on timeouts and odd inputs: not equal
        return False


def _worker_init() -> None:
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    import math_verify  # noqa: F401  (import once, at start-up, not on the clock)


def _worker_ready() -> int:
    return os.getpid()


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool whose worker may be stuck in C code (shutdown alone would wait)."""
    kill = getattr(pool, "kill_workers", None)  # Python >= 3.14
    processes = list((getattr(pool, "_processes", None) or {}).values())
    if kill is not None:
        kill()
    else:
        for process in processes:
            try:
                process.kill()
            except Exception:  # already gone
                pass
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)


def _get_pool() -> ProcessPoolExecutor:
    """The shared worker pool, started (and warmed up) on first use."""
    global _pool, _pool_pid, _pool_failure
    with _pool_lock:
        if _pool is not None and _pool_pid == os.getpid():
            return _pool
        _pool = None  # none yet, or inherited through fork: never share a parent's pool
        if _pool_failure is not None and _pool_failure[0] == os.getpid():
            raise _PoolUnavailable(_pool_failure[1])
        pool = None
        try:
            pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
            )
            pool.submit(_worker_ready).result(timeout=_STARTUP_TIMEOUT)
        except Exception as exc:
            if pool is not None:
                _kill_pool(pool)
            why = (
                f"cannot start the math-verify worker process ({type(exc).__name__}: {exc}). "
                "A script that grades LaTeX answers must guard its entry point with "
                "`if __name__ == '__main__':` (worker processes are spawned)."
            )
            _pool_failure = (os.getpid(), why)
            logger.warning("%s Falling back to math-verify in the main thread.", why)
            raise _PoolUnavailable(why) from exc
        _pool, _pool_pid = pool, os.getpid()
        return pool


def _discard_pool(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    _kill_pool(pool)


def _reset_after_fork() -> None:
    """A forked child starts without the parent's pool and locks (a worker is per process)."""
    global _pool_lock, _slot, _pool, _pool_pid, _pool_failure
    _pool_lock, _slot = threading.Lock(), threading.Semaphore(1)
    if _pool is not None:
        _inherited_pools.append(_pool)  # keep a reference: never shut down a parent's pool
    _pool, _pool_pid, _pool_failure = None, None, None


_inherited_pools: list[ProcessPoolExecutor] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _shutdown_pool() -> None:
    pool = _pool
    if pool is not None and _pool_pid == os.getpid():
        _kill_pool(pool)


@lru_cache(maxsize=65536)
def _verify_cached(pred: str, gold: str, timeout: float) -> bool:
    """The worker's verdict; raises `_Overrun` (not cached) when it ran out of time."""
    inner = max(1, int(timeout / 2))  # math-verify's own alarms: let the worker give up
    with _slot:
        for attempt in range(2):
            pool = _get_pool()
            try:
                future = pool.submit(_verify_here, pred, gold, inner)
                return bool(future.result(timeout=timeout))
            except FutureTimeout:
                logger.warning(
                    "math-verify overran %.1fs on %r vs %r: graded False, worker restarted",
                    timeout, pred[:80], gold[:80],
                )
                _discard_pool(pool)
                raise _Overrun() from None
            except BrokenProcessPool:  # the worker died (e.g. out of memory): retry once
                _discard_pool(pool)
                if attempt:
                    raise _Overrun() from None
    raise _Overrun()  # pragma: no cover


def verify(pred: str, gold: str, timeout: float, on_timeout: Optional[bool] = False) -> Optional[bool]:
    """math-verify's verdict on `pred` == `gold` (LaTeX), from the worker; `on_timeout`
    when it takes longer than `timeout` seconds (its worker is then replaced)."""
    try:
        return _verify_cached(pred, gold, float(timeout))
    except _Overrun:
        return on_timeout
    except _PoolUnavailable:
        if threading.current_thread() is not threading.main_thread():
            raise  # math-verify's own timeouts need the main thread: nothing safe is left
        return _verify_here(pred, gold, max(1, int(timeout)))
