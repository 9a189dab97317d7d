"""A weighted combination of critics (e.g. AlphaLLM's value + PRM + ORM trio)."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import numpy as np

from critics.base import Critic, check_values, score_with_cost
from critics.registry import as_critic, register_critic
from treesearch.types import State


class WeightedCritic:
    """Scores with every member concurrently; returns the weight-normalised mean."""

    def __init__(self, critics: Sequence[Any], weights: Sequence[float] | None = None):
        if not critics:
            raise ValueError("WeightedCritic needs at least one critic")
        self.critics: list[Critic] = [as_critic(c) for c in critics]
        weights = [1.0] * len(critics) if weights is None else list(weights)
        if len(weights) != len(self.critics):
            raise ValueError(f"WeightedCritic: {len(weights)} weights for {len(self.critics)} critics")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"WeightedCritic weights must be >= 0 with a positive sum, got {weights}")
        self.weights = w / w.sum()

    async def score_with_cost(self, states: Sequence[State]) -> tuple[np.ndarray, np.ndarray]:
        """The combined values, and the tokens members generated (e.g. rollouts)."""
        states = list(states)

        parts = await asyncio.gather(*(score_with_cost(c, states) for c in self.critics))
        checked = [check_values(v, len(states), repr(c)) for (v, _), c in zip(parts, self.critics)]
        tokens = np.sum([np.asarray(t, dtype=np.int64) for _, t in parts], axis=0)
        return np.clip(self.weights @ np.stack(checked), 0.0, 1.0), tokens

    async def score(self, states: Sequence[State]) -> np.ndarray:
        values, _ = await self.score_with_cost(states)
        return values


register_critic("weighted", WeightedCritic)
