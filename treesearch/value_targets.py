"""Per-node value targets of a search tree, the labels of harvested PRM rows and
preference pairs (`treesearch.harvest`).

`mc_values(tree)`: Monte Carlo estimates. For each node, the fraction of graded terminal
nodes in its subtree (itself included) that are correct, each terminal weighted by the
samples it stands for (`1 + duplicates`); NaN where no graded terminal lies below.

`hard_values(tree)`: hard estimates (Math-Shepherd's "hard estimation", Wang et al.
2024, arXiv 2312.08935): 1 for a step with a correct terminal below it, 0 for one with
decided ends and none correct (`step_outcomes`). On trees that mostly fail, a rare right
step gets the full 1 where its Monte Carlo estimate may be 0.05, so the PRM's targets are
not squeezed near 0.

`mixed_values(tree)`: the mean of the Monte Carlo and inferred values where both exist,
else the one that does: the inferred value's credit for closeness to a correct end with
the Monte Carlo estimate's odds of reaching one.

`critic_values(tree)`: the search critic's own value of each node (NaN where it scored
none): no gold answer in it. Under `critic=self_eval` these are the policy's
self-evaluations, so a PRM trained on them is a judge distilled from the model's own
judgements (Self-Judge), label-free.

`inferred_values(tree)`: ReST-MCTS* inferred process values (Zhang et al. 2024,
"ReST-MCTS*: LLM Self-Training via Process Reward Guided Tree Search", arXiv 2406.03816,
section 3 "weighted reward" / "quality value", and its training-data inference). What is
implemented, for a step node k with parent value v_{k-1} (the root is v_0 = 0):

    v_k = max(v_{k-1} + (1 - v_{k-1}) * r_k / (m_k + 1), 0)

- r_k = +1 when the subtree of k holds a correct terminal, -1 otherwise;
- m_k = the fewest further steps from k to a correct terminal seen in the tree (0 for a
  correct terminal itself). For a step with no correct terminal below, m_k is that of its
  nearest ancestor that has one: the distance at the point where the path left every
  correct continuation;
- nodes whose subtree holds no decided end (only open frontier leaves or ungraded
  terminals) are NaN; decided ends are graded terminals (reward 1/0) and closed
  non-terminal leaves (dead ends, depth limit), which count as failures.

Why "m_k + 1" and not "m_k" (as `DESIGN.md` wrote it): the paper's weighted reward (its
section 3.1, as recalled: the paper's body could not be opened with the tools used here,
only its abstract) is w_{s_k} = (1 - v_{k-1}) / (m_k + 1) * (1 - 2 r_{s_k}), with
v_k = max(v_{k-1} + w_{s_k}, 0) and m_k the reasoning distance (the fewest steps still
needed from s_k to the correct answer), so a correct final step (m_k = 0) gets exactly
v_k = 1, where the bare m_k would divide by zero. The sign factor (1 - 2 r_{s_k}) with "r_{s_k}
the PRM's output sigmoid score" reads inverted (THUDM/ReST-MCTS issue #12, "Formula 2 &
Observation 2", quotes that sentence and asks about the contradiction); for training
targets from gold answers the authors' code settles it: +1 on steps with a correct
continuation, -1 otherwise. That code, THUDM/ReST-MCTS `MCTS/base.py` (`treeNode`), was
read and agrees with the formula above:

    # a verified-correct end leaf (MCTS/task.py, verify_end_nodes):
    leaf.min_steps_to_correct = 1
    # ancestors (get_full_value_samples_vm):
    cur_node.min_steps_to_correct = min([n.min_steps_to_correct for n in cur_node.children.values()]) + 1
    # a wrong leaf: walk up to the first ancestor with a finite distance, m = its distance,
    # and give that m to every node between them:
    while cur_node.min_steps_to_correct == 1024: cur_node.min_steps_to_correct = m
    # values (get_all_value_samples_vm), r = 1 on correct routes (he == 1) else -1:
    self.V = max(0, (1 - self.parent.V) * r / self.min_steps_to_correct + self.parent.V)

Their `min_steps_to_correct` counts the node itself (1 at a correct leaf), i.e. it is our
m_k + 1; wrong nodes inherit the nearest correct-bearing ancestor's value, as above.
Differences from that code, on purpose: (1) it emits no value samples for a tree without
a correct end (`if flag:`); here the formula is applied as written, which gives 0 to every
decided node of such a tree (v_0 = 0 and r = -1 keep it at 0 for any m); (2) it considers
only the end leaves the search verified, so subtrees ending in unexpanded leaves are
skipped; here closed dead ends count as failed ends and open leaves leave a node NaN.
Values stay in [0, 1]: a correct step moves v toward 1 by a fraction <= 1, a wrong one
toward 0, clipped at 0.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from treesearch.tree import Tree

GOLD_SOURCES = ("inferred", "mc", "hard", "mixed")  # from the gold-graded outcomes in the tree
VALUE_SOURCES = (*GOLD_SOURCES, "critic")


def _ends(tree: Tree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(correct terminal, decided failed end, leaf) masks over the tree's nodes."""
    terminal = tree.column("terminal")
    reward = tree.column("reward")
    leaf = tree.column("num_children") == 0
    correct = terminal & (reward == 1)
    failed = (terminal & (reward == 0)) | (~terminal & tree.column("closed") & leaf)
    return correct, failed, leaf


def inferred_values(tree: Tree) -> np.ndarray:
    """ReST-MCTS* inferred process values of every node (float64, `[len(tree)]`, in [0, 1]
    or NaN); the root holds v_0 = 0. See the module docstring for the formula."""
    n = len(tree)
    parent = tree.column("parent")
    correct, failed, _ = _ends(tree)
    # children always have larger ids than their parent: reverse id order is a post-order
    dist = np.where(correct, 0.0, np.inf)
    decided = correct | failed
    for i in range(n - 1, 0, -1):
        p = parent[i]
        dist[p] = min(dist[p], dist[i] + 1.0)
        decided[p] |= decided[i]
    values = np.full(n, np.nan)
    values[0] = 0.0
    anchor = np.empty(n)  # m of the nearest node on the root path with a correct terminal below
    anchor[0] = dist[0]
    for i in range(1, n):
        p = parent[i]
        anchor[i] = dist[i] if np.isfinite(dist[i]) else anchor[p]
        v = values[p]
        if math.isnan(v) or not decided[i]:
            continue
        if np.isfinite(dist[i]):
            values[i] = v + (1.0 - v) / (dist[i] + 1.0)
        elif np.isfinite(anchor[p]):
            values[i] = max(v - (1.0 - v) / (anchor[p] + 1.0), 0.0)
        else:
            values[i] = 0.0  # no correct end anywhere above: v stays at v_0 = 0 for any m
    return values


def mc_values(tree: Tree) -> np.ndarray:
    """Monte Carlo value estimates (float64, `[len(tree)]`): per node, the sample-weighted
    fraction of graded terminals in its subtree that are correct; NaN where none is."""
    n = len(tree)
    parent = tree.column("parent")
    terminal = tree.column("terminal")
    reward = tree.column("reward").astype(np.float64)
    graded = terminal & ~np.isnan(reward)
    weight = np.where(graded, 1.0 + tree.column("duplicates"), 0.0)
    total = weight.copy()
    good = np.where(graded, weight * np.nan_to_num(reward), 0.0)
    for i in range(n - 1, 0, -1):
        total[parent[i]] += total[i]
        good[parent[i]] += good[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, good / np.where(total > 0, total, 1.0), np.nan)


def hard_values(tree: Tree) -> np.ndarray:
    """Hard estimates: 1.0 for a step with a correct terminal below it (itself included),
    0.0 for one with decided ends and none correct, NaN when undecided; the root NaN."""
    return step_outcomes(tree)


def mixed_values(tree: Tree) -> np.ndarray:
    """The mean of `mc_values` and `inferred_values` where both exist, else the one that
    does (NaN where neither)."""
    both = np.stack([mc_values(tree), inferred_values(tree)])
    count = (~np.isnan(both)).sum(axis=0)
    total = np.nansum(both, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def critic_values(tree: Tree) -> np.ndarray:
    """The critic value the search gave each node (clipped to [0, 1]); NaN where none, and at the root."""
    out = np.clip(np.asarray(tree.column("critic_value"), dtype=np.float64), 0.0, 1.0)
    out[0] = np.nan
    return out


def value_targets(tree: Tree, values: str = "inferred") -> np.ndarray:
    """The targets of one of `VALUE_SOURCES` by name."""
    sources = {"inferred": inferred_values, "mc": mc_values, "hard": hard_values, "mixed": mixed_values,
               "critic": critic_values}
    if values in sources:
        return sources[values](tree)
    raise ValueError(f"unknown value source {values!r}; choose from {VALUE_SOURCES}")


def step_outcomes(tree: Tree) -> np.ndarray:
    """Per node: 1.0 when its subtree holds a correct terminal (a right step), 0.0 when it
    holds decided ends but no correct one (a wrong step), NaN when undecided; the root NaN."""
    parent = tree.column("parent")
    correct, failed, _ = _ends(tree)
    right, decided = correct.copy(), correct | failed
    for i in range(len(tree) - 1, 0, -1):  # children have larger ids: reverse order is post-order
        right[parent[i]] |= right[i]
        decided[parent[i]] |= decided[i]
    out = np.where(decided, right.astype(np.float64), np.nan)
    out[0] = np.nan
    return out


class TargetRanking:
    """How well value targets rank right steps above wrong ones (`step_outcomes`), pooled
    over trees (`add` each): among sibling pairs (one right step, one wrong, same parent)
    and among all such pairs in a tree (any depths), the share where the right step's
    target is higher (ties count half). A target that mostly encodes depth ranks siblings
    well and mixed depths badly. Monte Carlo targets rank every pair by construction (a
    wrong step has none of its samples correct); the figure tells targets apart that
    do not."""

    KINDS = ("sibling", "any_depth")

    def __init__(self, values: str):
        self.values = values
        self.scores = {k: 0.0 for k in self.KINDS}
        self.pairs = {k: 0 for k in self.KINDS}

    def add(self, tree: Tree, targets: Optional[np.ndarray] = None) -> None:
        targets = value_targets(tree, self.values) if targets is None else targets
        outcome = step_outcomes(tree)
        usable = ~np.isnan(targets) & ~np.isnan(outcome)
        right = np.flatnonzero(usable & (outcome == 1.0))
        wrong = np.flatnonzero(usable & (outcome == 0.0))
        if not right.size or not wrong.size:
            return
        parent = tree.column("parent")
        self._count("any_depth", targets[right], targets[wrong])
        by_parent: dict[int, list] = {}
        for node in right:
            by_parent.setdefault(int(parent[node]), [[], []])[0].append(targets[node])
        for node in wrong:
            by_parent.setdefault(int(parent[node]), [[], []])[1].append(targets[node])
        for good, bad in by_parent.values():
            if good and bad:
                self._count("sibling", np.asarray(good), np.asarray(bad))

    def _count(self, kind: str, good: np.ndarray, bad: np.ndarray) -> None:
        """Pairs (one of `good`, one of `bad`) where the good target is higher, ties half:
        by sorting, without forming the pairs."""
        bad = np.sort(bad)
        below = np.searchsorted(bad, good, side="left")
        not_above = np.searchsorted(bad, good, side="right")
        self.scores[kind] += float(below.sum() + 0.5 * (not_above - below).sum())
        self.pairs[kind] += int(good.size * bad.size)

    def as_dict(self) -> dict:
        out: dict = {}
        for kind in self.KINDS:
            out[f"{kind}_pairs"] = self.pairs[kind]
            out[f"{kind}_accuracy"] = self.scores[kind] / self.pairs[kind] if self.pairs[kind] else None
        return out
