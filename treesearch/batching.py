"""Gathering single model requests from many trees into batched engine calls.

Each search coroutine awaits `Batcher.submit(key, item)`; the batcher groups pending
items by `key` (e.g. the sampling parameters) and calls its batch function with up to
`max_batch_size` items of one key. While `max_concurrency` calls are in flight, new
requests queue up, so the next batch is large: with an engine that is busy most of the
time, batch sizes approach the number of trees waiting on it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable, Sequence

from treesearch.types import JobStopped

BatchFn = Callable[[Hashable, list[Any]], Awaitable[Sequence[Any]]]


@dataclass
class ModelClock:
    """Wall time during which at least one model call was running (shared by batchers)."""

    busy_seconds: float = 0.0
    _active: int = 0
    _since: float = 0.0

    def enter(self) -> None:
        if self._active == 0:
            self._since = time.perf_counter()
        self._active += 1

    def leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self.busy_seconds += time.perf_counter() - self._since


@dataclass
class BatchStats:
    """Per-model batching statistics."""

    sizes: list[int] = field(default_factory=list)
    call_seconds: float = 0.0

    @property
    def calls(self) -> int:
        return len(self.sizes)

    @property
    def requests(self) -> int:
        return sum(self.sizes)

    @property
    def mean_batch_size(self) -> float:
        return self.requests / self.calls if self.calls else 0.0

    def histogram(self) -> dict[int, int]:
        """Batch size -> number of calls of that size."""
        return dict(sorted(Counter(self.sizes).items()))

    def as_dict(self) -> dict:
        return {
            "calls": self.calls,
            "requests": self.requests,
            "mean_batch_size": self.mean_batch_size,
            "call_seconds": self.call_seconds,
            "histogram": self.histogram(),
        }


class Batcher:
    """Batches `submit`ted items per key into calls of `batch_fn(key, items)`."""

    def __init__(
        self,
        batch_fn: BatchFn,
        *,
        max_batch_size: int = 64,
        max_wait_s: float = 0.002,
        max_concurrency: int = 1,
        clock: ModelClock | None = None,
        name: str = "model",
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_concurrency = max_concurrency
        self.clock = clock or ModelClock()
        self.name = name
        self.stats = BatchStats()
        self._pending: dict[Hashable, list[tuple[Any, asyncio.Future]]] = {}
        self._order: list[Hashable] = []  # keys in order of their oldest pending item
        self._count = 0
        self._nonempty: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._worker: asyncio.Task | None = None
        self._calls: set[asyncio.Task] = set()

    async def submit(self, key: Hashable, item: Any) -> Any:
        """Queue one request and wait for its result."""
        self._ensure_worker()
        future = asyncio.get_running_loop().create_future()
        if key not in self._pending:
            self._pending[key] = []
            self._order.append(key)
        self._pending[key].append((item, future))
        self._count += 1
        self._nonempty.set()
        if self._count >= self.max_batch_size:
            self._full.set()
        return await future

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._nonempty = asyncio.Event()
            self._full = asyncio.Event()
            self._slots = asyncio.Semaphore(self.max_concurrency)
            self._worker = asyncio.get_running_loop().create_task(self._loop())

    def _take(self) -> tuple[Hashable, list[tuple[Any, asyncio.Future]]]:
        key = self._order[0]
        items = self._pending[key]
        batch, rest = items[: self.max_batch_size], items[self.max_batch_size :]
        if rest:
            self._pending[key] = rest
        else:
            del self._pending[key]
            self._order.pop(0)
        self._count -= len(batch)
        if self._count == 0:
            self._nonempty.clear()
        if self._count < self.max_batch_size:
            self._full.clear()
        return key, batch

    async def _loop(self) -> None:
        while True:
            await self._nonempty.wait()
            await self._slots.acquire()
            if self._count < self.max_batch_size and self.max_wait_s > 0:
                try:
                    await asyncio.wait_for(self._full.wait(), self.max_wait_s)
                except asyncio.TimeoutError:
                    pass
            if self._count == 0:
                self._slots.release()
                continue
            key, batch = self._take()
            task = asyncio.get_running_loop().create_task(self._call(key, batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, key: Hashable, batch: list[tuple[Any, asyncio.Future]]) -> None:
        live = [(item, fut) for item, fut in batch if not fut.cancelled()]
        try:
            if live:
                await self._dispatch(key, live)
        except BaseException as exc:  # cancelled: hand it to every waiter of this batch
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            raise
        finally:
            self._slots.release()

    async def _dispatch(self, key: Hashable, live: list[tuple[Any, asyncio.Future]]) -> None:
        """Run one batch. If it fails, retry its requests one by one, so that only the
        requests that fail on their own get the error (one bad tree cannot sink a batch)."""
        self.clock.enter()
        started = time.perf_counter()
        try:
            results = await self.batch_fn(key, [item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(
                    f"{self.name}: batch call returned {len(results)} results for {len(live)} requests"
                )
        except Exception as exc:
            error: Exception | None = exc
        else:
            error = None
        finally:
            self.stats.call_seconds += time.perf_counter() - started
            self.clock.leave()
        self.stats.sizes.append(len(live))
        if error is None:
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)
        elif len(live) > 1 and not isinstance(error, JobStopped):
            for single in live:
                await self._dispatch(key, [single])
        else:  # one request, or nothing can go on (JobStopped): every waiter gets the error
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(error)

    async def close(self) -> None:
        """Stop the worker: calls in flight finish; requests still queued fail."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        for items in self._pending.values():
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(RuntimeError(f"{self.name} batcher closed before the request was sent"))
        self._pending.clear()
        self._order.clear()
        self._count = 0


class RoutedBatcher:
    """One `Batcher` per model replica: each request goes to the batcher of the replica
    `route(item)` names, so every engine call is one whole batch for one replica (rather
    than one batch split into a small call per replica). The parts share one `stats`."""

    def __init__(self, parts: Sequence[Batcher], route: Callable[[Any], int]):
        if not parts:
            raise ValueError("RoutedBatcher needs at least one batcher")
        self.parts = list(parts)
        self.route = route

    @property
    def stats(self) -> BatchStats:
        return self.parts[0].stats

    @stats.setter
    def stats(self, value: BatchStats) -> None:
        for part in self.parts:
            part.stats = value

    async def submit(self, key: Hashable, item: Any) -> Any:
        return await self.parts[self.route(item)].submit(key, item)

    async def close(self) -> None:
        await asyncio.gather(*(part.close() for part in self.parts))
