"""Label-free rounds: pseudo-labels from the search itself, for data without gold answers.

`vote_label(tree, task)`: the answer the tree's terminal solutions agree on most (each
terminal weighted by the samples it stands for, `1 + duplicates`; answers compared by the
task's grader, so "12" and "12.0" vote together; a tie goes to the answer reached
first). `apply_label(tree, task, label)` grades the tree's terminals against it, as the
gold-answer grading of a search would, so harvesting (value targets, SFT traces,
preference pairs) runs unchanged on pseudo-labelled trees. This is majority-vote
self-consistency as the training signal (the "sharpening" line of work: the model is
trained towards the answers it already agrees on most).

`verified_label(tree, task)`: the same vote with each terminal weighted by its critic
value as well, the search's own judgment of the finished solution. With `critic=self_eval`
that is the policy verifying its answer (P("Yes") that the solution is right), as in the
self-verification and self-judging lines of work: an answer many samples reach but the
model does not believe loses to one it does. A terminal without a critic value weighs
0.5 (no opinion).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from treesearch.tasks import Task
from treesearch.tree import Tree

NO_OPINION = 0.5  # the weight of a terminal's critic value when it has none
GOLD_READING_CRITICS = ("verifier", "rollout")  # critics that grade against the gold answer


def check_label_free_critic(labels: str, critic: Optional[str], where: str) -> None:
    """Refuse label-free labels on searches whose critic read the gold answers: their
    values (which `self_verify` weighs by) and trees would leak the labels they stand in for."""
    if labels != "gold" and critic in GOLD_READING_CRITICS:
        raise ValueError(f"{where}: labels={labels} is for data without gold answers, but critic={critic} "
                         "grades against them: choose a critic that does not (critic=self_eval, a PRM, or none "
                         "under search=self_consistency)")


def vote_label(tree: Tree, task: Task) -> Optional[str]:
    """The majority answer among the tree's terminals; None when none has an answer."""
    return _weighted_vote(tree, task, verified=False)


def verified_label(tree: Tree, task: Task) -> Optional[str]:
    """The answer with the most critic-weighted votes among the tree's terminals (each
    terminal: its samples times its critic value); None when none has an answer."""
    return _weighted_vote(tree, task, verified=True)


PSEUDO_LABELS = {"vote": vote_label, "self_verify": verified_label}  # the label-free sources
LABEL_SOURCES = ("gold", *PSEUDO_LABELS)


def pseudo_label(tree: Tree, task: Task, source: str) -> Optional[str]:
    """The label-free label of `tree` from `source` ("vote" or "self_verify")."""
    if source not in PSEUDO_LABELS:
        raise ValueError(f"no pseudo-labels from {source!r}; label-free sources: {', '.join(PSEUDO_LABELS)}")
    return PSEUDO_LABELS[source](tree, task)


def _weighted_vote(tree: Tree, task: Task, verified: bool) -> Optional[str]:
    groups: list[list] = []  # [representative answer, weight]
    for node in tree.terminal_nodes():
        answer = tree.answer[int(node)]
        if answer is None:
            continue
        weight = float(1 + int(tree.duplicates[node]))
        if verified:
            value = float(tree.critic_value[node])
            weight *= NO_OPINION if np.isnan(value) else value
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
