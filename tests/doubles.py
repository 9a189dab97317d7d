"""Test doubles: scripted policies whose proposals and costs are known in advance."""

from __future__ import annotations

import asyncio
import math
import random
import zlib
from typing import Callable, Optional, Sequence, Union

from treesearch.policy import per_state_counts, per_state_params
from treesearch.types import SamplingParams, State, Step

Candidates = list[tuple[str, float]]  # (step text, summed logprob)


def _step(text: str, logprob: float) -> Step:
    finish = "stop" if text.endswith("\n") else "eos"
    return Step(text=text, num_tokens=max(1, len(text.split())), logprob=logprob, finish_reason=finish)


class ScriptedPolicy:
    """Proposes steps from a script `{steps so far (tuple): [(text, logprob), ...]}`.

    - temperature 0: always the highest-logprob candidate
    - `mode="cycle"`: sample i of an expansion is candidate i (mod the count), in order
    - `mode="sequence"`: like cycle, but each request continues where the previous one
      for the same prefix stopped (so a widening brings the next candidates)
    - `mode="sample"`: samples by the candidates' probabilities, seeded by params.seed
    Prefixes missing from the script get `fallback(prefix)` (default: a final wrong answer).
    `delay` seconds are awaited per call (an engine's latency). Every call is recorded.
    """

    def __init__(
        self,
        script: Union[dict, Callable[[tuple], Candidates]],
        mode: str = "cycle",
        delay: float = 0.0,
        fallback: Optional[Callable[[tuple], Candidates]] = None,
    ):
        self.script = script
        self.mode = mode
        self.delay = delay
        self.fallback = fallback or (lambda prefix: [("The answer is -1.", -1.0)])
        self.calls: list[tuple[str, int]] = []  # (kind, batch size)
        self.cursor: dict[tuple, int] = {}  # sequence mode: candidates handed out per prefix
        self.expanded: list[tuple] = []  # the prefix of every state sent to expand, in order

    def candidates(self, prefix: tuple) -> Candidates:
        if callable(self.script):
            return self.script(prefix)
        return self.script.get(prefix) or self.fallback(prefix)

    def _pick(self, prefix: tuple, i: int, params: SamplingParams, rng: random.Random) -> Step:
        cands = self.candidates(prefix)
        if params.temperature == 0:
            return _step(*max(cands, key=lambda c: c[1]))
        if self.mode == "cycle":
            return _step(*cands[i % len(cands)])
        if self.mode == "sequence":
            i = self.cursor.get(prefix, 0)
            self.cursor[prefix] = i + 1
            return _step(*cands[i % len(cands)])
        weights = [math.exp(lp) for _, lp in cands]
        return _step(*rng.choices(cands, weights=weights)[0])

    def _rng(self, params: SamplingParams, state: State) -> random.Random:
        seed = params.seed if params.seed is not None else 0
        return random.Random(seed * 7919 + zlib.crc32("".join(state.steps).encode()))

    async def expand(self, states: Sequence[State], n, params) -> list[list[Step]]:
        counts = per_state_counts(states, n)
        self.calls.append(("expand", len(states)))
        self.expanded.extend(tuple(state.steps) for state in states)
        if self.delay:
            await asyncio.sleep(self.delay)
        out = []
        for state, count, params in zip(states, counts, per_state_params(states, params)):
            rng = self._rng(params, state)
            out.append([self._pick(state.steps, i, params, rng) for i in range(count)])
        return out

    async def complete(self, states: Sequence[State], params) -> list[list[Step]]:
        self.calls.append(("complete", len(states)))
        if self.delay:
            await asyncio.sleep(self.delay)
        out = []
        for state, params in zip(states, per_state_params(states, params)):
            rng = self._rng(params, state)
            prefix, steps, budget = tuple(state.steps), [], params.max_new_tokens
            for i in range(50):
                step = self._pick(prefix, rng.randrange(1 << 30), params, rng)
                steps.append(step)
                budget -= step.num_tokens
                prefix += (step.text,)
                if step.finish_reason == "eos" or "answer is" in step.text or budget <= 0:
                    break
            out.append(steps)
        return out


def random_script(seed: int, branching: int = 3, depth: int = 4, padding: int = 0) -> Callable[[tuple], Candidates]:
    """A deterministic pseudo-random infinite script: each prefix gets `branching`
    candidates; prefixes at `depth` (or by chance earlier) get answering steps. Steps
    carry up to `padding` extra words (tokens), so they can be made long."""

    def script(prefix: tuple) -> Candidates:
        rng = random.Random(seed * 1_000_003 + zlib.crc32("|".join(prefix).encode()))
        out = []
        for j in range(rng.randint(1, branching)):
            if len(prefix) + 1 >= depth or rng.random() < 0.2:
                text = f"The answer is {rng.randint(0, 3)}.\n"
            else:
                text = f"step {len(prefix)}.{j} {rng.randint(0, 2)}" + " w" * rng.randint(padding // 2, padding) + "\n"
            out.append((text, -rng.uniform(0.1, 5.0)))
        return out

    return script


def hashed_value(seed: int) -> Callable[[State], float]:
    """A deterministic pseudo-random critic on [0, 1]."""

    def value(state: State) -> float:
        return random.Random(seed + zlib.crc32(state.solution.encode())).random()

    return value


def scripted_policy(seed: int, mode: str = "sample") -> ScriptedPolicy:
    """A ScriptedPolicy on `random_script(seed)`, buildable from a config mapping
    (`{"backend": "python", "factory": "tests.doubles:scripted_policy", "seed": 3}`)."""
    return ScriptedPolicy(random_script(seed), mode=mode)


class ContinuousPolicy(ScriptedPolicy):
    """A ScriptedPolicy standing in for an engine that batches continuously: it declares
    `calls_in_flight`, and a call takes `slow_delay` seconds when it holds a state of a
    problem whose id starts with "slow" (`delay` otherwise)."""

    def __init__(self, script, calls_in_flight: int = 8, delay: float = 0.005, slow_delay: float = 0.25, **kwargs):
        super().__init__(script, **kwargs)
        self.calls_in_flight = calls_in_flight
        self.fast_delay, self.slow_delay = delay, slow_delay

    async def expand(self, states, n, params):
        slow = any(str(s.problem.id).startswith("slow") for s in states)
        await asyncio.sleep(self.slow_delay if slow else self.fast_delay)
        return await super().expand(states, n, params)


def continuous_policy(seed: int, calls_in_flight: int = 8) -> ContinuousPolicy:
    """A ContinuousPolicy on `random_script(seed)`, buildable from a config (`_target_`)."""
    return ContinuousPolicy(random_script(seed), calls_in_flight=calls_in_flight, mode="sample")


class CrashingPolicy:
    """A policy whose process dies on every call (a model that cannot serve)."""

    async def expand(self, states, n, params):
        import os

        os._exit(1)

    async def complete(self, states, params):
        import os

        os._exit(1)
