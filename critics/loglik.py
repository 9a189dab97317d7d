"""Sequence log-likelihood: how probable the model finds the solution so far."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from critics.registry import register_critic
from critics.lm import LMScorer, ModelArg
from treesearch.prompting import render_prompt
from treesearch.types import State


class LogLikelihoodCritic:
    """value = exp(mean log-probability of the solution's tokens given the prompt), the
    per-token geometric-mean probability, in (0, 1]. An empty solution scores 1."""

    def __init__(
        self,
        model: ModelArg = "smollm2",
        *,
        device: str = "auto",
        dtype: Any = "auto",
        threads: Optional[int] = None,
        max_batch_size: int = 16,
    ):
        self.lm = LMScorer(model, device=device, dtype=dtype, threads=threads, max_batch_size=max_batch_size)

    def _forward(self, items: list[tuple[list[int], int]]) -> list[float]:
        import torch

        ids, mask = self.lm.pad([seq for seq, _ in items])
        logprobs = torch.log_softmax(self.lm.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        out = []
        for i, (seq, start) in enumerate(items):
            if start >= len(seq):
                out.append(1.0)
                continue
            targets = ids[i, start : len(seq)]
            token_lp = logprobs[i, start - 1 : len(seq) - 1].gather(1, targets[:, None]).squeeze(1)
            out.append(float(torch.exp(token_lp.mean())))
        return out

    async def score(self, states: Sequence[State]) -> np.ndarray:
        items = []
        for state in states:
            prompt = self.lm.encode(render_prompt(self.lm.tokenizer, state.prompt))
            # the first token has no prediction, so scoring starts at position >= 1
            items.append((prompt + self.lm.encode(state.solution), max(len(prompt), 1)))
        values = await self.lm.run(self._forward, items)
        return np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)


register_critic("loglik", LogLikelihoodCritic)
