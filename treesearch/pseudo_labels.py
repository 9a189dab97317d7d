"""Label-free rounds: pseudo-labels from the search itself, for data without gold answers.

`vote_label(tree, task)`: the answer the tree's terminal solutions agree on most (each
terminal weighted by the samples it stands for, `1 + duplicates`; answers compared by the
task's grader, so "12" and "12.0" vote together; a tie goes to the answer reached
first). `apply_label(tree, task, label)` grades the tree's terminals against it, as the
gold-answer grading of a search would, so harvesting (value targets, SFT traces,
preference pairs) runs unchanged on pseudo-labelled trees. This is majority-vote
self-consistency as the training signal (the "sharpening" line of work: the model is
trained towards the answers it already agrees on most).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from treesearch.tasks import Task
from treesearch.tree import Tree

LABEL_SOURCES = ("gold", "vote")


def vote_label(tree: Tree, task: Task) -> Optional[str]:
    """The majority answer among the tree's terminals; None when none has an answer."""
    groups: list[list] = []  # [representative answer, weight]
    for node in tree.terminal_nodes():
        answer = tree.answer[int(node)]
        if answer is None:
            continue
        weight = 1 + int(tree.duplicates[node])
        for group in groups:
            if task.grade(answer, group[0]):
                group[1] += weight
                break
        else:
            groups.append([answer, weight])
    if not groups:
        return None
    return max(groups, key=lambda g: g[1])[0]  # max keeps the first of equal weights


def apply_label(tree: Tree, task: Task, label: Optional[str]) -> None:
    """Grade every terminal of `tree` against `label` in place (reward 1 or 0; no label:
    every terminal stays ungraded, NaN)."""
    terminals = tree.terminal_nodes()
    if label is None:
        tree.reward[terminals] = np.nan
        return
    for node in terminals:
        answer = tree.answer[int(node)]
        tree.reward[node] = 1.0 if answer is not None and task.grade(answer, label) else 0.0
