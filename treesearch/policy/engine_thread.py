"""An event loop in a thread of its own that owns an async engine.

vLLM's `AsyncLLM` binds its output handler to the event loop of its first request; a
second `asyncio.run` (each `treesearch.search()` call makes one) then hangs or fails. An
`EngineThread` builds the engine on its private loop and runs every request there, so
callers on any loop, one after another or at once, share one engine.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Coroutine


class EngineThread:
    """Builds `build()`'s engine on a private loop in a daemon thread (`name`); `call`
    runs a coroutine on that loop and awaits its result from the caller's loop."""

    def __init__(self, build: Callable[[], Any], name: str = "engine"):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

        async def built():
            return build()

        try:
            self.engine = self.run(built())
        except BaseException:
            self.close()
            raise

    async def call(self, coroutine: Coroutine) -> Any:
        """Await `coroutine` run on the engine's loop (cancelling the caller cancels it)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def run(self, coroutine: Coroutine) -> Any:
        """Run `coroutine` on the engine's loop and block until it is done (not from that loop)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        """Stop the loop and its thread (the engine itself is shut down by its owner first).
        Tasks still on the loop (an engine's output handler) are cancelled and awaited, so
        none is destroyed pending."""
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            try:
                self.run(_cancel_the_others())
            except RuntimeError:  # the loop stopped under us: nothing left to drain
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


async def _cancel_the_others() -> None:
    """Cancel every task on the running loop but this one, and wait for them to end."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
