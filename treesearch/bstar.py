"""B-STaR monitoring: exploration and exploitation of a self-training round.

From k sampled solutions per problem, each with a critic value and a correctness grade:

- exploration: pass@k (some sample is correct) and the number of distinct correct
  solutions among the k (by solution text);
- exploitation: how often the critic's pick (the highest-valued sample) is correct;
- balance score (B-STaR, Zeng et al. 2024): per problem, over *unique* responses (the
  same solution text sampled twice counts once, as the authors' code deduplicates
  (query, response) pairs first), with n the responses the critic selects (value >=
  threshold) and n' the correct ones among them,
  ``bs = min(n' / n_star, 1) * (n' / n)`` (0 when nothing is selected), averaged over
  problems. It rewards having enough distinct correct samples (exploration) that the
  critic can tell apart (exploitation). `n_star` defaults to 8, the paper's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from treesearch.tree import Tree


@dataclass(frozen=True)
class Sample:
    """One sampled solution: its text, critic value and whether it is correct."""

    solution: str
    value: float
    correct: bool


def samples_from_tree(tree: Tree) -> list[Sample]:
    """The sampled solutions in a flat-sampling tree (best-of-N / self-consistency): every
    graded terminal node, repeated by its multiplicity (1 + duplicates)."""
    out = []
    for node in tree.terminal_nodes():
        reward = float(tree.reward[node])
        if math.isnan(reward):
            continue
        value = float(tree.critic_value[node])
        sample = Sample("".join(tree.steps(int(node))), 0.0 if math.isnan(value) else value, reward > 0.5)
        out.extend([sample] * (1 + int(tree.duplicates[node])))
    return out


def unique_responses(samples: Sequence[Sample]) -> list[Sample]:
    """One sample per distinct solution text (stripped), keeping the highest value seen
    for it (copies of one node share a value; the same text from two nodes may not)."""
    best: dict[str, Sample] = {}
    for s in samples:
        key = s.solution.strip()
        if key not in best or s.value > best[key].value:
            best[key] = s
    return list(best.values())


def balance_score(samples: Sequence[Sample], threshold: float, n_star: int = 8) -> float:
    """B-STaR's balance score of one problem's samples, over unique responses."""
    selected = [s for s in unique_responses(samples) if s.value >= threshold]
    if not selected:
        return 0.0
    correct = sum(s.correct for s in selected)
    return min(correct / n_star, 1.0) * correct / len(selected)


def bstar_metrics(per_problem: Iterable[Sequence[Sample]], threshold: float = 0.5, n_star: int = 8) -> dict:
    """Exploration, exploitation and balance over problems (each a list of k samples)."""
    if n_star < 1:
        raise ValueError(f"n_star must be >= 1, got {n_star}")
    pass_k, distinct, pick, balance, ks = [], [], [], [], []
    for samples in per_problem:
        if not samples:
            continue
        ks.append(len(samples))
        pass_k.append(any(s.correct for s in samples))
        distinct.append(sum(s.correct for s in unique_responses(samples)))
        pick.append(max(samples, key=lambda s: s.value).correct)
        balance.append(balance_score(samples, threshold, n_star))
    if not ks:
        return {"problems": 0}
    return {
        "problems": len(ks),
        "k": float(np.mean(ks)),
        "pass_at_k": float(np.mean(pass_k)),
        "distinct_correct": float(np.mean(distinct)),
        "exploitation": float(np.mean(pick)),
        "balance_score": float(np.mean(balance)),
        "threshold": threshold,
        "n_star": n_star,
    }
