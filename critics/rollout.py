"""Monte Carlo rollouts: finish the solution k times with a policy; value = mean outcome."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from critics.base import Critic
from critics.registry import as_critic, register_critic
from treesearch.schemas import RolloutCriticConfig
from treesearch.tasks import Task
from treesearch.types import SamplingParams, State


class RolloutCritic:
    """Values a state by `k` sampled completions from `policy` (possibly a smaller, faster
    one than the search's), each graded against the gold answer when the problem has one,
    else valued by `outcome_critic` (an ORM on the finished solution). Terminal states are
    graded directly, without rollouts.

    Rollout tokens count toward the search's generated-token budget (see `score_with_cost`).
    """

    def __init__(
        self,
        policy: Any,
        k: int = RolloutCriticConfig.k,
        *,
        task: Optional[Task] = None,
        outcome_critic: Any = None,
        temperature: float = RolloutCriticConfig.temperature,
        max_new_tokens: int = RolloutCriticConfig.max_new_tokens,
        seed: Optional[int] = None,
    ):
        if k < 1:
            raise ValueError(f"RolloutCritic.k must be >= 1, got {k}")
        self.policy = policy
        self.k = k
        self.task = task or Task()
        self.outcome_critic: Optional[Critic] = as_critic(outcome_critic) if outcome_critic is not None else None
        self.params = SamplingParams(
            temperature=temperature, max_new_tokens=max_new_tokens, stop=(self.task.step_delimiter,), seed=seed
        )
        self._calls = 0

    async def _outcomes(self, finals: list[State]) -> np.ndarray:
        graded = [s.problem.gold is not None for s in finals]
        out = np.zeros(len(finals))
        for i, s in enumerate(finals):
            if graded[i]:
                out[i] = float(self.task.grade(s.answer, s.problem.gold))
        rest = [i for i, g in enumerate(graded) if not g]
        if rest:
            if self.outcome_critic is None:
                pid = finals[rest[0]].problem.id
                raise ValueError(
                    f"rollout critic: problem {pid!r} has no gold answer and no outcome_critic was given"
                )
            out[rest] = await self.outcome_critic.score([finals[i] for i in rest])
        return out

    def _params(self, count: int) -> list[SamplingParams]:
        if self.params.seed is None:
            return [self.params] * count
        self._calls += 1
        base = self.params.seed * 1_000_003 + self._calls * 10_007
        return [dataclasses.replace(self.params, seed=(base + j) % 2**31) for j in range(count)]

    async def score_with_cost(self, states: Sequence[State]) -> tuple[np.ndarray, np.ndarray]:
        """Values and the tokens generated for each state's rollouts."""
        states = list(states)
        values = np.zeros(len(states))
        tokens = np.zeros(len(states), dtype=np.int64)
        finals: list[State] = []
        owners: list[int] = []
        for i, s in enumerate(states):
            if s.terminal:
                finals.append(s)
                owners.append(i)
        open_ = [i for i, s in enumerate(states) if not s.terminal]
        if open_:
            repeated = [states[i] for i in open_ for _ in range(self.k)]
            completions = await self.policy.complete(repeated, self._params(len(repeated)))
            for j, (state, steps) in enumerate(zip(repeated, completions)):
                owner = open_[j // self.k]
                tokens[owner] += sum(step.num_tokens for step in steps)
                solution = state.solution + "".join(step.text for step in steps)
                finals.append(
                    dataclasses.replace(
                        state,
                        steps=state.steps + tuple(step.text for step in steps),
                        terminal=True,
                        answer=self.task.extract_answer(solution),
                    )
                )
                owners.append(owner)
        outcomes = await self._outcomes(finals)
        weights = np.array([1.0 if states[o].terminal else 1.0 / self.k for o in owners])
        np.add.at(values, owners, outcomes * weights)
        return np.clip(values, 0.0, 1.0), tokens

    async def score(self, states: Sequence[State]) -> np.ndarray:
        values, _ = await self.score_with_cost(states)
        return values


register_critic("rollout", RolloutCritic)
