"""Best-of-N: sample whole solutions, value them with the critic, pick the best-valued
one (default) or by a critic-weighted vote (`answer_selection="weighted"`).

The default is "value" because on the controlled benchmark (BENCHMARKS.md) the weighted
vote falls as samples grow whenever wrong answers are frequent (their summed values
outvote the right one), while the best-valued solution keeps improving."""

from __future__ import annotations

from dataclasses import dataclass

from treesearch.search.base import SearchContext
from treesearch.search.self_consistency import SelfConsistency, SelfConsistencyConfig


@dataclass
class BestOfNConfig(SelfConsistencyConfig):
    """`score_steps`: also value every intermediate step (PRM-style per-step values for
    harvesting); otherwise only each solution's last node is scored."""

    answer_selection: str = "value"
    score_steps: bool = False


class BestOfN(SelfConsistency):
    name = "best_of_n"
    Config = BestOfNConfig
    needs_critic = True

    async def search(self, ctx: SearchContext) -> None:
        leaves = sorted(set(await self.sample(ctx)) - {0})
        if self.config.score_steps:
            nodes = list(range(1, len(ctx.tree)))
        else:
            nodes = leaves
        await ctx.score(nodes)
