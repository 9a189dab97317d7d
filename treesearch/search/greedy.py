"""Greedy decoding: one temperature-0 completion. The cheapest baseline."""

from __future__ import annotations

from dataclasses import dataclass

from treesearch.search.base import SearchAlgorithm, SearchConfig, SearchContext


@dataclass
class GreedyConfig(SearchConfig):
    pass


class Greedy(SearchAlgorithm):
    name = "greedy"
    Config = GreedyConfig

    async def search(self, ctx: SearchContext) -> None:
        if ctx.exhausted():
            return
        ctx.accounting.simulations += 1
        params = ctx.sampling(greedy=True, whole_solution=True)
        steps = await ctx.complete_state(ctx.state(0), params)
        ctx.add_solutions(0, [steps])
