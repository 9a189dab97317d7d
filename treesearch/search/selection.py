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

import numpy as np

from treesearch.tree import Tree

SELECTION_RULES = ("puct", "uct")
PRIOR_MODES = ("mean_logprob", "logprob", "uniform")


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
    """Scores of `node`'s children (-inf for closed ones)."""
    kids = tree.children(node)
    n = tree.visits[kids].astype(np.float64)
    vl = tree.virtual_loss[kids].astype(np.float64)
    q = tree.value(kids, backup)
    q = np.where(np.isnan(q), fpu, q)
    n_eff = np.maximum(n, 1.0)
    q_vl = (q * n_eff + vl_value * vl) / (n_eff + vl)
    parent_n = float(tree.visits[node] + tree.virtual_loss[node])
    if rule == "puct":
        u = c * tree.prior[kids] * np.sqrt(parent_n) / (1.0 + n + vl)
    elif rule == "uct":
        u = c * np.sqrt(np.log(parent_n + 1.0) / (1.0 + n + vl))
    else:
        raise ValueError(f"unknown selection rule {rule!r}; choose from {SELECTION_RULES}")
    scores = q_vl + u
    scores[tree.closed[kids]] = -np.inf
    return scores


def select_child(tree: Tree, node: int, **kwargs) -> int:
    """The open child of `node` with the highest selection score, or -1 if none is open."""
    scores = selection_scores(tree, node, **kwargs)
    if scores.size == 0 or not np.isfinite(scores).any():
        return -1
    return int(tree.first_child[node] + int(np.argmax(scores)))


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
