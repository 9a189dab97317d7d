"""MCTS* (ReST-MCTS*-style) with PUCT/UCT selection and virtual loss.

One simulation:

1. select: from the root, follow the open child with the best PUCT (or UCT) score until
   reaching a node without children, or a node that should widen; every node on the
   path takes a virtual loss, so the `parallel_simulations` simulations in flight spread
   over the tree;
2. expand: sample `expansions` next steps (`root_expansions` at the root), merge
   identical ones, and value every new child with the critic. With `widening`, an
   expanded node gets more children later, and a node not due them is visited as it
   stands (see `treesearch.search.widening`);
3. simulate: the best new child is the simulation's leaf; optionally roll it forward
   greedily for `rollforward_steps` steps and mix the critic value of where it lands:
   v = (1 - rollforward_weight) * v_critic + rollforward_weight * v_rollforward;
4. back up: remove the virtual loss and add v to every node on the path (Q is the mean
   of backed-up values, or their max with `backup="max"`).

With `q_transform="minmax"`, Q enters selection normalised by the range of values seen
in the tree (MuZero's normalisation), so `c_puct` does not depend on the critic's scale.

The search ends when the budget is spent, when every path is closed (terminal, dead end,
or depth limit, and nothing left to widen), or when a terminal node's value reaches
`terminal_gate`. Under a token budget each expansion asks for no more steps than the
uncommitted budget covers (`SearchContext.affordable`), so the budget is overrun by less
than one step of `max_step_tokens`. Children that were never visited keep their critic
value as Q (first-play value), so one expansion's critic calls inform selection among
all its children.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Optional

import numpy as np

from treesearch import kernels
from treesearch.search.base import SearchAlgorithm, SearchConfig, SearchContext
from treesearch.search.selection import Q_TRANSFORMS, SELECTION_RULES, Descent
from treesearch.search.widening import Widening

BACKUPS = ("mean", "max")


@dataclass
class MCTSConfig(SearchConfig):
    """MCTS* options. The defaults were chosen on the controlled benchmark
    (`benchmarks/search_oracle.py`, BENCHMARKS.md): one step per expansion, widened
    when the critic says no child is good enough; one simulation per tree at a time
    (batches come from many trees); max backup and min-max normalised Q; the answer of
    the terminal whose steps have the best mean critic value."""

    expansions: int = 1
    root_expansions: int = 1
    c_puct: float = 1.0
    selection: str = "puct"
    parallel_simulations: int = 1
    virtual_loss_value: float = 0.0
    backup: str = "max"
    rollforward_steps: int = 0
    rollforward_weight: float = 0.5
    terminal_gate: Optional[float] = None
    answer_selection: str = "path_mean"
    q_transform: str = "minmax"
    widening: bool = True
    widening_alpha: float = 0.5
    widening_margin: Optional[float] = 0.1

    @property
    def path_backup(self) -> str:
        return self.backup

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        for field in ("expansions", "root_expansions", "parallel_simulations"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        if self.c_puct < 0:
            raise ValueError(f"{name}.c_puct must be >= 0, got {self.c_puct}")
        if self.selection not in SELECTION_RULES:
            raise ValueError(f"{name}.selection must be one of {SELECTION_RULES}, got {self.selection!r}")
        if self.backup not in BACKUPS:
            raise ValueError(f"{name}.backup must be one of {BACKUPS}, got {self.backup!r}")
        if self.rollforward_steps < 0:
            raise ValueError(f"{name}.rollforward_steps must be >= 0, got {self.rollforward_steps}")
        for field in ("rollforward_weight", "virtual_loss_value"):
            if not 0 <= getattr(self, field) <= 1:
                raise ValueError(f"{name}.{field} must be in [0, 1], got {getattr(self, field)}")
        if self.terminal_gate is not None and not 0 <= self.terminal_gate <= 1:
            raise ValueError(f"{name}.terminal_gate must be in [0, 1] or None, got {self.terminal_gate}")
        if self.q_transform not in Q_TRANSFORMS:
            raise ValueError(f"{name}.q_transform must be one of {Q_TRANSFORMS}, got {self.q_transform!r}")
        if not 0 <= self.widening_alpha <= 1:
            raise ValueError(f"{name}.widening_alpha must be in [0, 1], got {self.widening_alpha}")
        if self.widening_margin is not None and self.widening_margin < 0:
            raise ValueError(f"{name}.widening_margin must be >= 0 or None, got {self.widening_margin}")

    def widening_rule(self) -> Widening:
        """The widening rule of these options (inert when `widening` is off: no node is
        then marked as one that may widen)."""
        return Widening(self.root_expansions, self.expansions, self.widening_alpha, self.widening_margin)


class MCTSStar(SearchAlgorithm):
    name = "mcts"
    Config = MCTSConfig
    needs_critic = True

    async def search(self, ctx: SearchContext) -> None:
        tree, cfg = ctx.tree, self.config
        pending: dict[int, asyncio.Future] = {}  # nodes being expanded -> done signal
        gate_passed = False
        in_flight: set[asyncio.Task] = set()
        descent = Descent(
            c=cfg.c_puct,
            rule=cfg.selection,
            backup=cfg.backup,
            vl_value=cfg.virtual_loss_value,
            q_transform=cfg.q_transform,
            widening=cfg.widening_rule(),
        )
        try:
            while True:
                while (
                    len(in_flight) < cfg.parallel_simulations
                    and not gate_passed
                    and not tree.closed[0]
                    and ctx.can_spend()
                ):
                    ctx.accounting.simulations += 1
                    in_flight.add(asyncio.ensure_future(self._simulate(ctx, descent, pending)))
                if not in_flight:
                    return
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
                if cfg.terminal_gate is not None:
                    gate_passed = self._gate_passed(tree)
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    def _gate_passed(self, tree) -> bool:
        """Some terminal node's value (backed up, else the critic's) reached the gate."""
        terminals = tree.terminal_nodes()
        if terminals.size == 0:
            return False
        values = np.asarray(tree.value(terminals, self.config.backup), dtype=np.float64)
        return bool(np.nanmax(values, initial=-np.inf) >= self.config.terminal_gate)

    async def _simulate(
        self, ctx: SearchContext, descent: Descent, pending: dict[int, asyncio.Future]
    ) -> tuple[int, float]:
        """Run one simulation; return its leaf and the value backed up (leaf -1: none)."""
        tree = ctx.tree
        path = [0]
        tree.virtual_loss[0] += 1
        try:
            node = 0
            while True:
                chosen, outcome = descent.run(tree, node)  # compiled selection
                path.extend(chosen)
                node = path[-1]
                if outcome == kernels.DEAD_END or tree.closed[node]:
                    return -1, float("nan")  # everything below is closed, or a closed leaf
                if outcome == kernels.REVISIT:  # a paced node with nothing open below it
                    return self._revisit(tree, descent, node, path)
                if node in pending:  # another simulation is expanding it: wait, then go on
                    await asyncio.shield(pending[node])
                    continue
                leaf, value = await self._expand(ctx, descent, node, pending, path)
                if leaf < 0:
                    return -1, float("nan")
                tree.backup(path, value, release_virtual_loss=True)
                descent.observe([value])
                path = []
                return leaf, value
        finally:
            if path:
                tree.virtual_loss[path] -= 1

    def _revisit(self, tree, descent: Descent, node: int, path: list[int]) -> tuple[int, float]:
        """Visit `node`, which has no open child and is not due another sample, as it
        stands (as a terminal is visited): back up its Q along the path at no token
        cost, so its visits grow and pace its next widening, and its ancestors' visits
        grow so selection there also weighs its siblings."""
        value = float(tree.value(node, self.config.backup))  # (the critic's value while unvisited)
        if np.isnan(value):
            return -1, float("nan")
        tree.backup(path, value, release_virtual_loss=True)
        path.clear()
        descent.observe([value])
        return node, value

    async def _expand(
        self, ctx: SearchContext, descent: Descent, node: int, pending: dict[int, asyncio.Future], path: list[int]
    ) -> tuple[int, float]:
        """Expand (or widen) and value `node`'s children; return the best new child and
        its value. The best child joins `path` (with its virtual loss) before any
        roll-forward, so other simulations see it as taken while it rolls."""
        tree, cfg = ctx.tree, self.config
        done = asyncio.get_running_loop().create_future()
        pending[node] = done
        try:
            drawn = int(tree.samples[node])
            old_kids = tree.children(node)
            old_dups = tree.duplicates[old_kids].copy()
            kids = await ctx.expand(node, descent.widening.samples_wanted(tree, node), widenable=cfg.widening)
            if kids.size == 0:
                if tree.samples[node] == drawn:
                    return -1, float("nan")  # nothing was affordable
                return self._resampled(tree, descent.widening, node, old_kids, old_dups, path)
            values = await ctx.score(kids)
            descent.observe(values)
        finally:
            del pending[node]
            done.set_result(None)
        best = int(kids[int(np.argmax(values))])
        value = float(values.max())
        path.append(best)
        tree.virtual_loss[best] += 1
        if cfg.rollforward_steps > 0 and cfg.rollforward_weight > 0 and not tree.terminal[best]:
            end = await ctx.roll_forward(best, cfg.rollforward_steps)
            (rolled,) = await ctx.score_states([end])
            tree.rollout_value[best] = rolled
            value = (1 - cfg.rollforward_weight) * value + cfg.rollforward_weight * float(rolled)
        return best, value

    def _resampled(self, tree, widening: Widening, node: int, kids: np.ndarray, dups_before: np.ndarray,
                   path: list[int]) -> tuple[int, float]:
        """A widening of `node` that brought only steps it already had (the node may be
        paced or stopped from now on: `Widening.after_repeat`). The simulation ends at the
        best child that was sampled again, backing up its value, so the node's visits grow
        and selection moves on instead of widening it again at once. Returns (-1, NaN)
        when no child was sampled again (the steps were empty)."""
        widening.after_repeat(tree, node, self.config.backup)
        again = kids[tree.duplicates[kids] > dups_before]
        if again.size == 0:
            return -1, float("nan")
        q = np.asarray(tree.value(again, self.config.backup), dtype=np.float64)
        if np.isnan(q).all():
            return -1, float("nan")
        best = int(again[int(np.nanargmax(q))])
        path.append(best)
        tree.virtual_loss[best] += 1
        return best, float(np.nanmax(q))
