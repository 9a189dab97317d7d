"""Self-evaluation: the policy model judges its own step, value = P("Yes")."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from critics.registry import register_critic
from critics.lm import ModelArg, encode_text, scorer_for, single_token, yes_probabilities
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
    weights are reused), a ready `(model, tokenizer)` pair, or a `TokenScorer` such as
    the policy's vLLM engine.
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
        self.lm = scorer_for(model, device=device, dtype=dtype, threads=threads, max_batch_size=max_batch_size)
        self.question = question
        self.yes_id = single_token(self.lm.tokenizer, yes, "self-eval answer")
        self.no_id = single_token(self.lm.tokenizer, no, "self-eval answer")

    def judge_text(self, state: State) -> str:
        """The rendered judging prompt for `state` (ends where the model says Yes/No)."""
        content = self.question.format(question=state.problem.question, solution=state.solution.strip())
        return render_prompt(self.lm.tokenizer, [{"role": "user", "content": content}])

    async def score(self, states: Sequence[State]) -> np.ndarray:
        sequences = [encode_text(self.lm.tokenizer, self.judge_text(s)) for s in states]
        return await yes_probabilities(self.lm, sequences, self.yes_id, self.no_id)


register_critic("self_eval", SelfEvalCritic)
