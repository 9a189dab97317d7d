"""Turns on the CPU for the compute-heavy calls of one process.

On a CPU the policy's engine and a critic's network (a PRM on OpenVINO) each use every
core; run at once, they oversubscribe the cores and both slow down far more than their
sum (about 2.7x on 2 cores for a PRM beside the policy's engine). `CPU_TURNS.turn()` makes
such calls take turns, first come first served: an engine step, then the PRM forward
that was waiting for it, then the next step.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class CPUTurns:
    """A first-come-first-served lock (a ticket lock: no thread can take two turns while
    another waits)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._issued = 0
        self._serving = 0

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self._changed:
            ticket = self._issued
            self._issued += 1
            while ticket != self._serving:
                self._changed.wait()
        try:
            yield
        finally:
            with self._changed:
                self._serving += 1
                self._changed.notify_all()


CPU_TURNS = CPUTurns()
