"""The gold-answer verifier: 1 for a terminal state whose answer is right, else 0."""

from __future__ import annotations

import asyncio
from typing import Optional, Sequence

import numpy as np

from critics.registry import register_critic
from treesearch.tasks import Task
from treesearch.types import State


class VerifierCritic:
    """Grades terminal states against `problem.gold` with the task's grader.

    Non-terminal states get `nonterminal_value` (the verifier has no opinion on them).
    This is the critic of training-data mode, where gold answers are known.
    """

    def __init__(self, task: Optional[Task] = None, nonterminal_value: float = 0.5):
        if not 0 <= nonterminal_value <= 1:
            raise ValueError(f"nonterminal_value must be in [0, 1], got {nonterminal_value}")
        self.task = task or Task()
        self.nonterminal_value = nonterminal_value

    async def score(self, states: Sequence[State]) -> np.ndarray:
        out = np.full(len(states), self.nonterminal_value, dtype=np.float64)
        terminal = [i for i, s in enumerate(states) if s.terminal]
        for i in terminal:
            if states[i].problem.gold is None:
                raise ValueError(f"verifier critic: problem {states[i].problem.id!r} has no gold answer")
        if terminal:
            # grading may be slow (math-verify): keep it off the event loop
            grades = await asyncio.to_thread(
                lambda: [self.task.grade(states[i].answer, states[i].problem.gold) for i in terminal]
            )
            out[terminal] = np.asarray(grades, dtype=np.float64)
        return out


register_critic("verifier", VerifierCritic)
