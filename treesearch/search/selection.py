"""Child selection (PUCT / UCT with virtual loss) and step priors, vectorised.

For the children `a` of node `s`, with visits `n`, virtual loss `l` (simulations in flight
through the child), backed-up value `Q` (the critic's value while unvisited; `fpu` when
not even scored) and prior `P`:

    Q_vl   = (Q * max(n, 1) + vl_value * l) / (max(n, 1) + l)
    PUCT:  Q_vl + c * P * sqrt(N(s)) / (1 + n + l)
    UCT:   Q_vl + c * sqrt(log(N(s) + 1) / (1 + n + l))

where `N(s)` is the parent's visits plus its virtual loss. Closed children (nothing new
below them) are never selected. Ties go to the lowest id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from treesearch import kernels
from treesearch.tree import Tree

SELECTION_RULES = ("puct", "uct")
PRIOR_MODES = ("mean_logprob", "logprob", "uniform")
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
                            float(tree.prior[k]), parent_n, c, code, vl_value)
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
) -> int:
    """The open child of `node` with the highest selection score, or -1 if none is open."""
    return int(kernels.best_child(
        int(node), tree.first_child, tree.num_children, tree.closed, tree.visits,
        tree.virtual_loss, tree.value_sum, tree.value_max, tree.critic_value, tree.prior,
        float(c), _rule_code(rule), backup == "max", float(vl_value), float(fpu),
    ))


@dataclass
class Descent:
    """Selection from a node down to a leaf, compiled: `Descent(...).run(tree, node)`
    follows the best open child while the node is expanded (first-play value: the
    parent's Q, else 0.5), putting a virtual loss on each child chosen."""

    c: float = 1.0
    rule: str = "puct"
    backup: str = "mean"
    vl_value: float = 0.0

    def __post_init__(self) -> None:
        self._code = _rule_code(self.rule)
        self._buffer = np.empty(64, dtype=np.int64)

    def run(self, tree: Tree, node: int) -> tuple[list[int], bool]:
        """The children chosen below `node` (in order) and whether the walk ended at an
        unexpanded node (False: at an expanded node whose children are all closed)."""
        chosen: list[int] = []
        while True:
            count, outcome = kernels.descend(
                int(node), self._buffer, tree.expanded, tree.first_child, tree.num_children,
                tree.closed, tree.visits, tree.virtual_loss, tree.value_sum, tree.value_max,
                tree.critic_value, tree.prior, float(self.c), self._code, self.backup == "max",
                float(self.vl_value),
            )
            chosen.extend(self._buffer[:count].tolist())
            if outcome != kernels.PATH_FULL:
                return chosen, outcome == kernels.REACHED_LEAF
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
