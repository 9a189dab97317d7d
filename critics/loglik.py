"""Sequence log-likelihood: how probable the model finds the solution so far."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from critics.registry import register_critic
from critics.lm import ModelArg, encode_text, scorer_for
from treesearch.prompting import render_prompt
from treesearch.types import State


class LogLikelihoodCritic:
    """value = exp(mean log-probability of the solution's tokens given the prompt), the
    per-token geometric-mean probability, in (0, 1]. An empty solution scores 1. `model`
    as for `SelfEvalCritic` (a name/folder, a pair, or a `TokenScorer`)."""

    def __init__(
        self,
        model: ModelArg = "smollm2",
        *,
        device: str = "auto",
        dtype: Any = "auto",
        threads: Optional[int] = None,
        max_batch_size: int = 16,
    ):
        self.lm = scorer_for(model, device=device, dtype=dtype, threads=threads, max_batch_size=max_batch_size)

    async def score(self, states: Sequence[State]) -> np.ndarray:
        items = []
        tokenizer = self.lm.tokenizer
        for state in states:
            prompt = encode_text(tokenizer, render_prompt(tokenizer, state.prompt))
            # the first token has no prediction, so scoring starts at position >= 1
            items.append((prompt + encode_text(tokenizer, state.solution), max(len(prompt), 1)))
        scored = [i for i, (seq, start) in enumerate(items) if start < len(seq)]
        values = np.ones(len(states))  # an empty solution scores 1
        if scored:
            logprobs = await self.lm.token_logprobs([items[i] for i in scored])
            values[scored] = [np.exp(np.mean(lp)) for lp in logprobs]
        return np.clip(values, 0.0, 1.0)


register_critic("loglik", LogLikelihoodCritic)
