"""Step-level beam search: expand every beam by a few sampled steps, keep the best
`beam_width` open children by critic value, repeat. Under a token budget the last
depth's expansions shrink to what is left (best beams first), so the budget is overrun
by less than one step of `max_step_tokens`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from treesearch.search.base import SearchAlgorithm, SearchConfig, SearchContext


@dataclass
class BeamConfig(SearchConfig):
    """`beam_width`: open paths kept per depth; `expansions`: steps sampled per path."""

    beam_width: int = 4
    expansions: int = 4

    def validate(self) -> None:
        super().validate()
        for name in ("beam_width", "expansions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")


class BeamSearch(SearchAlgorithm):
    name = "beam"
    Config = BeamConfig
    needs_critic = True

    async def search(self, ctx: SearchContext) -> None:
        cfg, tree = self.config, ctx.tree
        beams = [0]
        while beams and ctx.can_spend():
            ctx.accounting.simulations += 1
            children = await asyncio.gather(*(ctx.expand(b, cfg.expansions) for b in beams))
            kids = np.concatenate(children) if children else np.zeros(0, dtype=np.int32)
            if kids.size == 0:
                break
            values = await ctx.score(kids)
            open_ = ~tree.closed[kids]
            order = np.argsort(-values[open_], kind="stable")
            beams = [int(k) for k in kids[open_][order[: cfg.beam_width]]]
