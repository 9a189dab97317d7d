"""Choosing the final answer among a tree's terminal nodes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from treesearch.tasks import Task
from treesearch.tree import Tree

ANSWER_SELECTIONS = ("value", "path_mean", "majority", "weighted")


@dataclass
class AnswerChoice:
    answer: Optional[str]
    node: int
    value: float
    candidates: dict[str, float] = field(default_factory=dict)


def select_answer(tree: Tree, task: Task, method: str = "value", backup: str = "mean") -> AnswerChoice:
    """Pick the answer by `method`:

    - ``value``: the terminal node with the highest value (Q, else critic value)
    - ``path_mean``: the terminal node whose path has the highest mean critic value over
      its steps (a PRM-style score of the whole solution: one noisy value cannot carry a
      path that went wrong earlier); where no step was scored, its value
    - ``majority``: the most frequent answer (ties: higher summed value)
    - ``weighted``: the answer with the highest summed value (a critic-weighted vote)

    A node stands for `1 + duplicates` samples (identical samples merged into it), and
    votes that many times. Answers are compared after `task.normalize_answer`. `candidates` maps each answer to
    its score under the method. With no answered terminal node, the answer is None and
    the node is the deepest best-valued one.
    """
    if method not in ANSWER_SELECTIONS:
        raise ValueError(f"unknown answer selection {method!r}; choose from {ANSWER_SELECTIONS}")
    nodes = [int(i) for i in tree.terminal_nodes() if tree.answer[i] is not None]
    if not nodes:
        return _no_answer(tree, backup)
    values = np.nan_to_num(np.asarray(tree.value(nodes, backup), dtype=np.float64), nan=0.0)
    if method == "path_mean":
        values = np.array([_path_mean(tree, node, fallback) for node, fallback in zip(nodes, values)])
    if method in ("value", "path_mean"):
        best = int(np.argmax(values))
        candidates: dict[str, float] = {}
        for node, v in zip(nodes, values):
            key = task.normalize_answer(tree.answer[node])
            candidates[key] = max(candidates.get(key, -np.inf), float(v))
        return AnswerChoice(tree.answer[nodes[best]], nodes[best], float(values[best]), candidates)

    counts: dict[str, int] = defaultdict(int)
    sums: dict[str, float] = defaultdict(float)
    best_node: dict[str, tuple[float, int]] = {}
    for node, v in zip(nodes, values):
        key = task.normalize_answer(tree.answer[node])
        votes = 1 + int(tree.duplicates[node])
        counts[key] += votes
        sums[key] += votes * float(v)
        if key not in best_node or v > best_node[key][0]:
            best_node[key] = (float(v), node)
    if method == "majority":
        ranked = max(counts, key=lambda k: (counts[k], sums[k]))
        candidates = {k: float(c) for k, c in counts.items()}
    else:
        ranked = max(sums, key=lambda k: (sums[k], counts[k]))
        candidates = dict(sums)
    value, node = best_node[ranked]
    return AnswerChoice(tree.answer[node], node, value, candidates)


def _path_mean(tree: Tree, node: int, fallback: float) -> float:
    """Mean critic value of the steps from the root to `node` (`fallback` if none)."""
    scored = tree.critic_value[tree.path(node)[1:]].astype(np.float64)
    scored = scored[~np.isnan(scored)]
    return float(scored.mean()) if scored.size else fallback


def _no_answer(tree: Tree, backup: str) -> AnswerChoice:
    if len(tree) == 1:
        return AnswerChoice(None, 0, 0.0)
    ids = np.arange(1, len(tree))
    values = np.nan_to_num(np.asarray(tree.value(ids, backup), dtype=np.float64), nan=0.0)
    order = np.lexsort((-values, -tree.depth[ids]))  # deepest first, then best value
    node = int(ids[order[0]])
    return AnswerChoice(None, node, float(values[order[0]]))
