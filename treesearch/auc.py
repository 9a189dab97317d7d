"""Ranking quality of scores against right/wrong outcomes: the ROC AUC, pooled and within
groups (numpy only, so evaluation code can use it without the training stack)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve (ties count one half); NaN when a class is missing."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = mean_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def within_problem_auc(scores: Sequence[float], positive: Sequence[bool], groups: Sequence[Any]) -> float:
    """The mean over groups (problems) holding both classes of the AUC within the group:
    how well the scores rank one problem's good steps above its bad ones, which is what
    a search needs (a pooled AUC also rewards telling easy problems from hard ones). NaN
    when no group holds both."""
    scores, positive, groups = np.asarray(scores), np.asarray(positive, dtype=bool), np.asarray(groups)
    aucs = [roc_auc(scores[groups == g], positive[groups == g]) for g in np.unique(groups)]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else math.nan
