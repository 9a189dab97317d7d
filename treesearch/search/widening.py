"""Widening: when an expanded MCTS* node gets more children, and how many.

A node whose first samples missed the right step must not be cut off for good, so an
expanded node that may widen (`Tree.can_widen`) gets more children later:

- a node the critic valued, when its best child's Q is below that value by more than
  `margin` (no child is as good as the node promised): `k0` more steps;
- a node without a value (the root), while it has drawn fewer than
  `ceil(k0_root * N ** alpha)` steps after N visits (progressive widening);
- a node none of whose children is open (all ended in answers, dead ends or closed
  subtrees), at that same progressive pace, `ceil(k0 * N ** alpha)` (alpha 0: at once).

Such a node that is not due a sample is visited as it stands (`kernels.REVISIT`), backing
up its Q at no token cost, so its visits, and with them its next widening, come while the
search values it. A widening that brings only steps the node already has
(`Widening.after_repeat`): when few unseen steps are left to expect (`saturated`), the
node is paced by its visits from then on (`Tree.widen_k`, progressive widening resumed
once its visits have doubled, `PACED_RESUME_FACTOR`), so a right step of small
probability stays within reach of a large budget; it stops widening for good instead
when none of its children is open and they are as good as it promised, and with alpha 0.

The descent checks these rules compiled (`kernels.descend`, `kernels.should_widen`);
this module holds the rule's parameters and the decisions taken in Python. It imports
only `kernels` and the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from treesearch import kernels
from treesearch.tree import Tree

# A saturated node widens again once its visits reach this multiple of its visits when it
# saturated, then progressively. Measured on the controlled benchmark (BENCHMARKS.md):
# resuming at once (1) found most at 16-32 solutions but lost up to 8 points at 4-8
# solutions with a noisy critic; 2 kept the small budgets intact.
PACED_RESUME_FACTOR = 2.0


@dataclass(frozen=True)
class Widening:
    """The widening rule: `k0_root` / `k0` steps per expansion at the root / elsewhere,
    the progressive pace `alpha` (0: never by visit count), and the `margin` by which a
    valued node's best child may fall short of it (None: never)."""

    k0_root: int = 1
    k0: int = 1
    alpha: float = 0.0
    margin: Optional[float] = None

    def allowed_samples(self, visits: int, root: bool, k: Optional[float] = None) -> int:
        """How many samples a node with `visits` may have drawn by now (with `k`, a
        saturated node's own coefficient `Tree.widen_k`)."""
        if k is None:
            k = self.k0_root if root else self.k0
        return int(kernels.allowed_samples(float(k), visits, float(self.alpha)))

    def samples_wanted(self, tree: Tree, node: int) -> int:
        """Steps to sample at `node` now: a first expansion's `k0_root` / `k0`; for a
        progressive widening of a node without a critic value (the root), up to what its
        visits allow; for a node the critic valued (its children fell short of it, or none
        is open), one expansion's worth, and for a saturated one at most that (however far
        its visits have run ahead of its samples)."""
        k0 = self.k0_root if node == 0 else self.k0
        paced = not np.isnan(tree.widen_k[node])
        valued = not np.isnan(tree.critic_value[node])
        if not tree.expanded[node] or (valued and not paced):
            return k0
        k = float(tree.widen_k[node]) if paced else None
        missing = self.allowed_samples(int(tree.visits[node]), root=node == 0, k=k) - int(tree.samples[node])
        if valued:
            return min(max(missing, 1), k0)
        if missing > 0:
            return missing
        return 1 if paced else k0

    def falls_short(self, tree: Tree, node: int, backup: str) -> bool:
        """`node`'s children fall short of what it promised: it has no critic value (the
        root), or its best child's Q (`backup`: "mean" or "max") is below that value by
        more than `margin` (never, without a margin)."""
        if np.isnan(tree.critic_value[node]):
            return True
        return bool(kernels.children_fall_short(
            int(node), tree.first_child, tree.next_sibling, tree.visits, tree.value_sum, tree.value_max,
            tree.critic_value, backup == "max", -1.0 if self.margin is None else float(self.margin),
        ))

    def after_repeat(self, tree: Tree, node: int, backup: str) -> None:
        """A widening of `node` brought only steps it already had. If it is saturated, it
        is paced by its visits from now on, or stopped for good when pacing cannot reach
        it again (alpha 0) or nothing is left to look for there: none of its children is
        open and they do not fall short of its value."""
        if not (tree.can_widen[node] and saturated(tree, node)):
            return
        kids = tree.children(node)
        open_kids = kids.size > 0 and not tree.closed[kids].all()
        if self.alpha <= 0 or not (open_kids or self.falls_short(tree, node, backup)):
            tree.stop_widening(node)
        elif np.isnan(tree.widen_k[node]):
            resume_at = PACED_RESUME_FACTOR * max(int(tree.visits[node]), 1)
            tree.widen_k[node] = int(tree.samples[node]) / resume_at ** self.alpha


def saturated(tree: Tree, node: int) -> bool:
    """Little chance is left that a new sample at `node` brings an unseen step: the
    Good-Turing estimate of that chance (children sampled once over all samples), with
    one pseudo-count against small samples, is below 1/8 (so at least 8 samples, every
    child drawn twice or more)."""
    kids = tree.children(node)
    once = int((tree.duplicates[kids] == 0).sum())
    samples = int((1 + tree.duplicates[kids]).sum())
    return bool(kids.size) and (once + 1) / (samples + 1) < 1 / 8
