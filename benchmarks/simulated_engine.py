"""A simulated GPU serving engine, for `benchmarks/scaling.py` and `benchmarks/chaos.py`
only (not the product).

`SimulatedPolicy` has the Policy protocol and is built inside each real Ray policy actor
through `policy._target_`. It models one GPU engine's latency: calls run one at a
time, and a call over `s` sequences takes `fixed_s + per_sequence_s * s` seconds of sleep
(no CPU), so many actors fit on a small machine. Its steps are deterministic pseudo-text
that reach an answer after `answer_depth` steps. `simulated_value` is a matching critic:
a hash of the steps, in [0, 1]. For fault injection, `poison` names a problem id whose
requests make the actor's process exit (a problem that crashes its actor every time), and
`crash_always` makes every call exit (a model that cannot serve).
"""

from __future__ import annotations

import asyncio
import math
import zlib

from treesearch.policy import per_state_counts, per_state_params
from treesearch.types import Step


class SimulatedPolicy:
    def __init__(self, fixed_s: float = 0.4, per_sequence_s: float = 0.002, step_tokens: int = 32,
                 answer_depth: int = 4, poison: str = "", crash_always: bool = False, **_ignored):
        self.fixed_s = fixed_s
        self.per_sequence_s = per_sequence_s
        self.step_tokens = step_tokens
        self.answer_depth = answer_depth
        self.poison = poison
        self.crash_always = crash_always
        self._engine: asyncio.Lock | None = None
        self.calls = 0

    def _maybe_crash(self, states) -> None:
        if self.crash_always or (self.poison and any(s.problem.id == self.poison for s in states)):
            import os

            os._exit(1)

    async def _run(self, sequences: int) -> None:
        if self._engine is None:
            self._engine = asyncio.Lock()
        async with self._engine:  # one batch on the GPU at a time
            self.calls += 1
            await asyncio.sleep(self.fixed_s + self.per_sequence_s * sequences)

    def _step(self, steps: tuple, index: int, seed: int) -> Step:
        h = zlib.crc32(f"{seed}|{index}|{'|'.join(steps)}".encode())
        if len(steps) + 1 >= self.answer_depth:
            return Step(text=f"The answer is {h % 20}.", num_tokens=self.step_tokens,
                        logprob=-1.0 - (h % 7) / 7, finish_reason="eos")
        return Step(text=f"step {len(steps)}: {h % 97}\n", num_tokens=self.step_tokens,
                    logprob=-1.0 - (h % 5) / 5, finish_reason="stop")

    async def expand(self, states, n, params):
        counts = per_state_counts(states, n)
        params = per_state_params(states, params)
        self._maybe_crash(states)
        await self._run(sum(counts))
        return [[self._step(tuple(s.steps), i, p.seed or 0) for i in range(c)]
                for s, c, p in zip(states, counts, params)]

    async def complete(self, states, params):
        params = per_state_params(states, params)
        self._maybe_crash(states)
        await self._run(len(states))
        out = []
        for s, p in zip(states, params):
            steps, prefix = [], tuple(s.steps)
            while not steps or steps[-1].finish_reason != "eos":
                steps.append(self._step(prefix, 0, p.seed or 0))
                prefix += (steps[-1].text,)
            out.append(steps)
        return out


def simulated_value(state) -> float:
    """A deterministic value in [0, 1] from the state's steps."""
    h = zlib.crc32("|".join(state.steps).encode())
    return 0.5 + 0.5 * math.sin(h)
