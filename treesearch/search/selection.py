"""Child selection (PUCT / UCT with virtual loss) and step priors.

For the children `a` of node `s`, with visits `n`, virtual loss `l` (simulations in flight
through the child), backed-up value `Q` (the critic's value while unvisited; `fpu` when
not even scored) and prior `P`:

    Q_vl   = (Q * max(n, 1) + vl_value * l) / (max(n, 1) + l)
    Q'     = (Q_vl - q_low) / (q_high - q_low)   with q_transform "minmax", else Q_vl
    PUCT:  Q' + c * P * sqrt(N(s)) / (1 + n + l)
    UCT:   Q' + c * sqrt(log(N(s) + 1) / (1 + n + l))

where `N(s)` is the parent's visits plus its virtual loss and [q_low, q_high] the range of
values seen in the tree so far (as MuZero normalises Q, so `c` does not depend on the
critic's scale). Closed children (nothing new below them) are never selected. Ties go to
the lowest id.

The descent stops early at a node that should widen (the rule: `widening.Widening`);
one with no open child that is not due a widening is visited as it stands
(`kernels.REVISIT`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from treesearch import kernels
from treesearch.search.widening import Widening
from treesearch.tree import Tree

SELECTION_RULES = ("puct", "uct")
PRIOR_MODES = ("mean_logprob", "logprob", "uniform")
Q_TRANSFORMS = ("none", "minmax")
_RULE_CODES = {"puct": kernels.RULE_PUCT, "uct": kernels.RULE_UCT}


def _rule_code(rule: str) -> int:
    try:
        return _RULE_CODES[rule]
    except KeyError:
        raise ValueError(f"unknown selection rule {rule!r}; choose from {SELECTION_RULES}") from None


def selection_scores(
    tree: Tree,
    node: int,
    *,
    c: float,
    rule: str = "puct",
    backup: str = "mean",
    vl_value: float = 0.0,
    fpu: float = 0.5,
    q_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Scores of `node`'s children (-inf for closed ones), for inspection; selection
    itself runs compiled in `select_child` and `Descent`, with the same formula."""
    code = _rule_code(rule)
    kids = tree.children(node)
    parent_n = float(tree.visits[node] + tree.virtual_loss[node])
    q = np.asarray(tree.value(kids, backup), dtype=np.float64)
    q = np.where(np.isnan(q), fpu, q)
    scores = np.array([
        kernels.child_score(q[i], float(tree.visits[k]), float(tree.virtual_loss[k]),
                            float(tree.prior[k]), parent_n, c, code, vl_value, *q_range)
        for i, k in enumerate(kids)
    ], dtype=np.float64)
    scores[tree.closed[kids]] = -np.inf
    return scores


def select_child(
    tree: Tree,
    node: int,
    *,
    c: float,
    rule: str = "puct",
    backup: str = "mean",
    vl_value: float = 0.0,
    fpu: float = 0.5,
    q_range: tuple[float, float] = (0.0, 1.0),
) -> int:
    """The open child of `node` with the highest selection score, or -1 if none is open."""
    return int(kernels.best_child(
        int(node), tree.first_child, tree.next_sibling, tree.closed, tree.visits,
        tree.virtual_loss, tree.value_sum, tree.value_max, tree.critic_value, tree.prior,
        float(c), _rule_code(rule), backup == "max", float(vl_value), float(fpu),
        float(q_range[0]), float(q_range[1]),
    ))


@dataclass
class Descent:
    """Selection from a node down to a leaf, compiled: `Descent(...).run(tree, node)`
    follows the best open child while the node is expanded (first-play value: the
    parent's Q, else 0.5), putting a virtual loss on each child chosen, and stops early
    at a node that should widen. With `q_transform="minmax"`, Q is normalised by the
    range of values passed to `observe`."""

    c: float = 1.0
    rule: str = "puct"
    backup: str = "mean"
    vl_value: float = 0.0
    q_transform: str = "none"
    widening: Widening = field(default_factory=Widening)

    def __post_init__(self) -> None:
        if self.q_transform not in Q_TRANSFORMS:
            raise ValueError(f"unknown q_transform {self.q_transform!r}; choose from {Q_TRANSFORMS}")
        self._code = _rule_code(self.rule)
        self._buffer = np.empty(64, dtype=np.int64)
        self.q_low, self.q_high = np.inf, -np.inf

    def observe(self, values) -> None:
        """Widen the range of values seen (backed up or scored) by `values`."""
        values = np.asarray(values, dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size:
            self.q_low = min(self.q_low, float(values.min()))
            self.q_high = max(self.q_high, float(values.max()))

    @property
    def q_range(self) -> tuple[float, float]:
        """The (low, high) that Q is normalised from; (0, 1) leaves Q as it is."""
        if self.q_transform == "minmax" and self.q_high > self.q_low:
            return self.q_low, self.q_high
        return 0.0, 1.0

    def run(self, tree: Tree, node: int) -> tuple[list[int], int]:
        """The children chosen below `node` (in order) and how the walk ended:
        `kernels.REACHED_LEAF` (at an unexpanded node), `kernels.WIDEN` (at a node, the
        last chosen or `node`, that should get more children), `kernels.REVISIT` (at a
        node with no open child that is not due a widening) or `kernels.DEAD_END` (at an
        expanded node whose children are all closed and that may not widen)."""
        chosen: list[int] = []
        w = self.widening
        margin = -1.0 if w.margin is None else float(w.margin)
        q_low, q_high = self.q_range
        while True:
            count, outcome = kernels.descend(
                int(node), self._buffer, tree.expanded, tree.parent, tree.first_child,
                tree.next_sibling, tree.closed, tree.can_widen, tree.samples, tree.widen_k, tree.visits,
                tree.virtual_loss, tree.value_sum, tree.value_max, tree.critic_value, tree.prior,
                float(self.c), self._code, self.backup == "max", float(self.vl_value),
                float(q_low), float(q_high), float(w.k0_root), float(w.k0), float(w.alpha), margin,
            )
            chosen.extend(self._buffer[:count].tolist())
            if outcome != kernels.PATH_FULL:
                return chosen, int(outcome)
            node = chosen[-1]
            self._buffer = np.empty(2 * len(self._buffer), dtype=np.int64)


def step_priors(logprobs: np.ndarray, num_tokens: np.ndarray, mode: str = "mean_logprob") -> np.ndarray:
    """Sibling priors from step log-probabilities, normalised to sum to 1.

    `mean_logprob` (default) uses the per-token mean, so long steps are not punished for
    their length; `logprob` uses the summed log-probability; `uniform` ignores both.
    """
    count = len(logprobs)
    if count == 0:
        return np.zeros(0)
    if mode == "uniform":
        return np.full(count, 1.0 / count)
    logits = np.asarray(logprobs, dtype=np.float64)
    if mode == "mean_logprob":
        logits = logits / np.maximum(np.asarray(num_tokens, dtype=np.float64), 1.0)
    elif mode != "logprob":
        raise ValueError(f"unknown prior mode {mode!r}; choose from {PRIOR_MODES}")
    logits = np.where(np.isfinite(logits), logits, -1e9)
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()
