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

The selection threshold may be absolute or a quantile of the round's critic values
(`best_balanced` tries several and keeps the best-balanced, as B-STaR chooses its
configuration per round by the balance score). `choose_sample_count` does the same for
the number of samples per problem: more samples can only add distinct correct ones, so it
keeps the smallest count whose balance score is within `tolerance` of the best, the
count past which sampling more buys little balance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

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


def bstar_metrics(per_problem: Iterable[Sequence[Sample]], threshold: Optional[float] = 0.5, n_star: int = 8,
                  quantile: Optional[float] = None) -> dict:
    """Exploration, exploitation and balance over problems (each a list of k samples).

    The selection threshold is `threshold` (an absolute critic value) or, with
    `quantile`, that quantile of the values of all unique responses of the round (a
    threshold relative to the critic's score distribution, which still selects something
    when the critic's values sit far from 0.5)."""
    if n_star < 1:
        raise ValueError(f"n_star must be >= 1, got {n_star}")
    problems = [list(samples) for samples in per_problem if samples]
    if quantile is not None:
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        values = [s.value for samples in problems for s in unique_responses(samples)]
        threshold = float(np.quantile(values, quantile)) if values else 0.5
    if threshold is None:
        raise ValueError("bstar_metrics needs a threshold or a quantile")
    pass_k, distinct, pick, balance, ks = [], [], [], [], []
    for samples in problems:
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
        "quantile": quantile,
        "n_star": n_star,
    }


def best_balanced(per_problem: Iterable[Sequence[Sample]], thresholds: Sequence[float] = (),
                  quantiles: Sequence[float] = (), n_star: int = 8) -> dict:
    """`bstar_metrics` at every candidate threshold (absolute values and quantiles), the
    best-balanced one first: `{**best, "candidates": [each candidate's metrics]}`."""
    problems = [list(samples) for samples in per_problem if samples]
    candidates = [bstar_metrics(problems, t, n_star) for t in thresholds]
    candidates += [bstar_metrics(problems, None, n_star, quantile=q) for q in quantiles]
    if not candidates:
        raise ValueError("best_balanced needs at least one threshold or quantile")
    best = max(candidates, key=lambda m: m.get("balance_score", 0.0))
    return {**best, "candidates": candidates}


def check_sample_counts(counts: Sequence[int], tolerance: float, k: Optional[int] = None) -> None:
    """Refuse sample counts below 1 (or above `k`, the samples drawn per problem) and a
    tolerance outside (0, 1], naming the bad value."""
    if not counts or any(int(c) < 1 for c in counts):
        raise ValueError(f"sample counts must be integers >= 1, got {list(counts)}")
    if k is not None and any(int(c) > int(k) for c in counts):
        raise ValueError(f"sample counts {[c for c in counts if int(c) > int(k)]} exceed the {k} samples drawn per problem")
    if not 0.0 < tolerance <= 1.0:
        raise ValueError(f"tolerance must be in (0, 1], got {tolerance}")


def choose_sample_count(per_problem: Iterable[Sequence[Sample]], counts: Sequence[int],
                        thresholds: Sequence[float] = (), quantiles: Sequence[float] = (), n_star: int = 8,
                        tolerance: float = 0.9, shuffle_seed: Optional[int] = None) -> dict:
    """The best-balanced figures of `c` samples of each problem, for each count `c` in
    `counts`, and the chosen count: the smallest whose balance score reaches `tolerance`
    times the best (the largest when every score is 0: nothing is selected right yet, so
    explore more). `{"by_count": {c: figures}, "chosen_sample_count": c}`.

    The `c` samples are a problem's first `c` as given, or with `shuffle_seed` the first
    `c` of a seeded random order of them (so a smaller count's are among a larger one's
    either way): `samples_from_tree` lists the copies of a merged duplicate side by side,
    so its first `c` are not `c` draws."""
    check_sample_counts(counts, tolerance)
    problems = [list(samples) for samples in per_problem if samples]
    if shuffle_seed is not None:
        rng = np.random.default_rng(shuffle_seed)
        problems = [[samples[i] for i in rng.permutation(len(samples))] for samples in problems]
    by_count = {}
    for c in sorted({int(c) for c in counts}):
        figures = best_balanced([samples[:c] for samples in problems], thresholds, quantiles, n_star)
        by_count[c] = {k: v for k, v in figures.items() if k != "candidates"}
    best = max(m.get("balance_score", 0.0) for m in by_count.values())
    chosen = max(by_count) if best <= 0 else min(c for c, m in by_count.items()
                                                 if m.get("balance_score", 0.0) >= tolerance * best)
    return {"by_count": by_count, "chosen_sample_count": chosen}
