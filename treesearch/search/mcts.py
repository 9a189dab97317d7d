"""MCTS* (ReST-MCTS*-style) with PUCT/UCT selection and virtual loss.

One simulation:

1. select: from the root, follow the open child with the best PUCT (or UCT) score until
   reaching a node without children, or a node that should widen; every node on the
   path takes a virtual loss, so the `parallel_simulations` simulations in flight spread
   over the tree;
2. expand: sample `expansions` next steps (`root_expansions` at the root), merge
   identical ones, and value every new child with the critic. With `widening`, an
   expanded node gets more children later (see `selection.Widening`), so a node whose
   first samples missed the right step is not cut off for good: when its best child's
   Q is below its own critic value by more than `widening_margin` (then `expansions`
   more steps); at the root, which has no value, when it has drawn fewer than
   `ceil(root_expansions * N ** widening_alpha)` steps after N visits (progressive
   widening); and when none of its children is open (all ended in answers, dead ends
   or closed subtrees) at that same progressive pace, `ceil(expansions * N **
   widening_alpha)`. Such a node that is not due a sample is visited as it stands,
   backing up its Q at no token cost, as a terminal is visited, so its visits, and with
   them its next widening, come while the search values it. A widening that brings only
   steps the node already has ends the simulation at the best child drawn again; when
   few unseen steps are left to expect (see `_saturated`) the node is paced by its
   visits from then on (progressive widening resumed once its visits have doubled:
   `Tree.widen_k`), so a right step of small probability stays within reach of a large
   budget. It stops widening for good instead when none of its children is open and
   they are as good as it promised (nothing is left to look for there), and with
   `widening_alpha` 0;
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
from treesearch.search.selection import Q_TRANSFORMS, SELECTION_RULES, Descent, Widening

BACKUPS = ("mean", "max")


# A saturated node widens again once its visits reach this multiple of its visits when it
# saturated, then progressively (see `MCTSStar._resampled`). Measured on the controlled
# benchmark (BENCHMARKS.md): resuming at once (1) found most at 16-32 solutions but lost
# up to 8 points at 4-8 solutions with a noisy critic; 2 kept the small budgets intact.
PACED_RESUME_FACTOR = 2.0


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

    def _samples_wanted(self, tree, node: int) -> int:
        """Steps to sample at `node` now: a first expansion's `root_expansions` /
        `expansions`; for a progressive widening of a node without a critic value (the
        root), up to what its visits allow; for a node the critic valued (its children fell
        short of it, or none is open), one expansion's worth, and for a saturated one at
        most that (however far its visits have run ahead of its samples)."""
        cfg = self.config
        k0 = cfg.root_expansions if node == 0 else cfg.expansions
        paced = not np.isnan(tree.widen_k[node])
        valued = not np.isnan(tree.critic_value[node])
        if not tree.expanded[node] or (valued and not paced):
            return k0
        k = float(tree.widen_k[node]) if paced else None
        allowed = cfg.widening_rule().allowed_samples(int(tree.visits[node]), root=node == 0, k=k)
        missing = allowed - int(tree.samples[node])
        if valued:
            return min(max(missing, 1), k0)
        if missing > 0:
            return missing
        return 1 if paced else k0

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
            kids = await ctx.expand(node, self._samples_wanted(tree, node), widenable=cfg.widening)
            if kids.size == 0:
                if tree.samples[node] == drawn:
                    return -1, float("nan")  # nothing was affordable
                return self._resampled(tree, node, old_kids, old_dups, path)
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

    def _resampled(self, tree, node: int, kids: np.ndarray, dups_before: np.ndarray, path: list[int]) -> tuple[int, float]:
        """A widening of `node` that brought only steps it already had. When few unseen
        steps are left to expect (`_saturated`), the node stops widening on its own rule:
        from then on its visits pace it (`Tree.widen_k`: it may draw
        `ceil(widen_k * N ** widening_alpha)` samples after N visits, the allowance
        reaching its samples now once its visits have doubled, `PACED_RESUME_FACTOR`),
        so a right step with a small probability stays within reach as the search keeps
        coming back (a node with no open child gets its visits from `_revisit`), unless
        `_pace_or_stop` stops it for good. The simulation ends at the best child that was
        sampled again, backing up its value, so the node's visits grow and selection
        moves on instead of widening it again at once. Returns (-1, NaN) when no child
        was sampled again (the steps were empty)."""
        if tree.can_widen[node] and self._saturated(tree, node):
            self._pace_or_stop(tree, node)
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

    def _pace_or_stop(self, tree, node: int) -> None:
        """A saturated node: paced by its visits from now on (see `_resampled`), or
        stopped for good when pacing cannot reach it again (`widening_alpha` 0) or when
        nothing is left to look for there: none of its children is open and they do not
        fall short of its value (`_falls_short`)."""
        kids = tree.children(node)
        open_kids = kids.size > 0 and not tree.closed[kids].all()
        if self.config.widening_alpha <= 0 or not (open_kids or self._falls_short(tree, node)):
            tree.stop_widening(node)
        elif np.isnan(tree.widen_k[node]):
            resume_at = PACED_RESUME_FACTOR * max(int(tree.visits[node]), 1)
            tree.widen_k[node] = int(tree.samples[node]) / resume_at ** self.config.widening_alpha

    def _falls_short(self, tree, node: int) -> bool:
        """`node`'s children fall short of what it promised: it has no critic value (the
        root), or its best child's Q is below that value by more than `widening_margin`
        (never, without a margin)."""
        if np.isnan(tree.critic_value[node]):
            return True
        margin = self.config.widening_margin
        return bool(kernels.children_fall_short(
            int(node), tree.first_child, tree.next_sibling, tree.visits, tree.value_sum, tree.value_max,
            tree.critic_value, self.config.backup == "max", -1.0 if margin is None else float(margin),
        ))

    @staticmethod
    def _saturated(tree, node: int) -> bool:
        """Little chance is left that a new sample at `node` brings an unseen step: the
        Good-Turing estimate of that chance (children sampled once over all samples),
        with one pseudo-count against small samples, is below 1/8 (so at least 8
        samples, every child drawn twice or more)."""
        kids = tree.children(node)
        once = int((tree.duplicates[kids] == 0).sum())
        samples = int((1 + tree.duplicates[kids]).sum())
        return bool(kids.size) and (once + 1) / (samples + 1) < 1 / 8
