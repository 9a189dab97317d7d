"""Self-consistency: sample whole solutions, answer by majority vote."""

from __future__ import annotations

from dataclasses import dataclass

from treesearch.search.base import SearchAlgorithm, SearchConfig, SearchContext


@dataclass
class SelfConsistencyConfig(SearchConfig):
    """`samples`: solutions to draw (the budget may stop earlier); `parallel`: how many
    are in flight at once at most. Under a token budget a wave holds only as many
    solutions as the tokens left cover at `max_solution_tokens` each, rounded up (see
    `SearchContext.affordable`), so the budget is overrun by less than
    `max_solution_tokens`."""

    samples: int = 8
    parallel: int = 8
    answer_selection: str = "majority"

    def validate(self) -> None:
        super().validate()
        for name in ("samples", "parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")


class SelfConsistency(SearchAlgorithm):
    name = "self_consistency"
    Config = SelfConsistencyConfig

    async def sample(self, ctx: SearchContext) -> list[int]:
        """Draw solutions in waves until `samples` or the budget is reached; insert them
        under the root as a prefix tree and return each one's last node."""
        cfg = self.config
        solutions: list = []
        while len(solutions) < cfg.samples and not ctx.exhausted():
            wave = ctx.affordable(min(cfg.parallel, cfg.samples - len(solutions)), cfg.max_solution_tokens)
            if ctx.budget.simulations is not None:
                wave = min(wave, ctx.budget.simulations - ctx.accounting.simulations)
            if ctx.budget.policy_calls is not None:
                wave = min(wave, ctx.budget.policy_calls - ctx.accounting.policy_calls)
            ctx.accounting.simulations += wave
            solutions += await ctx.sample_solutions(0, wave)
        return ctx.add_solutions(0, solutions)

    async def search(self, ctx: SearchContext) -> None:
        await self.sample(ctx)
