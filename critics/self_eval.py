"""Self-evaluation: the policy model judges its own step, value = P("Yes")."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from critics.registry import register_critic
from critics.lm import LMScorer, ModelArg
from treesearch.prompting import render_prompt
from treesearch.types import State

DEFAULT_QUESTION = (
    "Problem: {question}\n\nSolution so far:\n{solution}\n\n"
    "Is the last step of this solution correct? Answer Yes or No."
)


class SelfEvalCritic:
    """Asks the model whether the latest step is correct and reads the next-token
    probabilities of the two answers: value = P(yes) / (P(yes) + P(no)).

    `question` is formatted with `{question}` (the problem) and `{solution}` (the steps).
    `model` is a name/folder (loaded and shared through the model cache, so the policy's
    weights are reused) or a ready `(model, tokenizer)` pair.
    """

    def __init__(
        self,
        model: ModelArg = "smollm2",
        *,
        device: str = "auto",
        dtype: Any = "auto",
        threads: Optional[int] = None,
        question: str = DEFAULT_QUESTION,
        yes: str = "Yes",
        no: str = "No",
        max_batch_size: int = 16,
    ):
        self.lm = LMScorer(model, device=device, dtype=dtype, threads=threads, max_batch_size=max_batch_size)
        self.question = question
        self.yes_id = self._single_token(yes)
        self.no_id = self._single_token(no)

    def _single_token(self, word: str) -> int:
        ids = self.lm.encode(word)
        if len(ids) != 1:
            raise ValueError(f"self-eval answer {word!r} is {len(ids)} tokens; it must be one token")
        return ids[0]

    def judge_text(self, state: State) -> str:
        """The rendered judging prompt for `state` (ends where the model says Yes/No)."""
        content = self.question.format(question=state.problem.question, solution=state.solution.strip())
        return render_prompt(self.lm.tokenizer, [{"role": "user", "content": content}])

    def _forward(self, sequences: list[list[int]]) -> list[float]:
        import torch

        rows = self.lm.next_token_logits(sequences)
        pair = torch.stack([rows[:, self.yes_id], rows[:, self.no_id]], dim=1)
        return torch.softmax(pair, dim=1)[:, 0].tolist()

    async def score(self, states: Sequence[State]) -> np.ndarray:
        sequences = [self.lm.encode(self.judge_text(s)) for s in states]
        return np.asarray(await self.lm.run(self._forward, sequences), dtype=np.float64)


register_critic("self_eval", SelfEvalCritic)
