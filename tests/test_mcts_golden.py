"""MCTS* against a hand-computed tree.

Script (priors from summed logprobs, so they are exactly the probabilities below):
    root -> A (p .5, v .4), B (p .3, v .6), C (p .2, v .3)
    A    -> A1 (p .6, v .7), A2 (p .4, v .2)
    A1   -> X "The answer is 7." (p .9, v .9, terminal), Y (p .1, v .3)
    Y    -> T "The answer is 5." twice (merged: one node, v .1, terminal)
    B    -> B1 (p .6, v .5), B2 (p .4, v .1)
With c = 1, PUCT = Q + P * sqrt(N_parent + vl_parent) / (1 + n) and unvisited Q = critic:

sim 1: expand root; best new child B (.6)          -> backup .6 on [root, B]
sim 2: root N=1(+1 vl), sqrt 2: A .4+.5*1.414=1.107, B .6+.3*1.414/2=.812,
       C .3+.2*1.414=.583 -> A; expand A; best A1 (.7) -> backup .7 on [root, A, A1]
sim 3: root sqrt 3: A .7+.5*1.732/2=1.133, B .6+.3*1.732/2=.860, C .646 -> A;
       A sqrt 2: A1 .7+.6*1.414/2=1.124, A2 .2+.4*1.414=.766 -> A1;
       expand A1; best X (.9, terminal) -> backup .9 on [root, A, A1, X]
sim 4: root sqrt 4: A .8+.5*2/3=1.133, B .6+.3*2/2=.9, C .3+.2*2=.7 -> A;
       A sqrt 3: A1 .8+.6*1.732/3=1.146, A2 .2+.4*1.732=.893 -> A1;
       A1: X closed, Y -> Y; expand Y; T (.1) -> backup .1 on [root, A, A1, Y, T];
       A1 is now closed (X terminal, Y's only child terminal)
sim 5: root sqrt 5: A 1.7/3+.5*2.236/4=.846, B .6+.3*2.236/2=.935, C .3+.2*2.236=.747
       -> B; expand B; best B1 (.5) -> backup .5 on [root, B, B1]
"""

import math

import pytest

import treesearch
from treesearch import Budget
from tests.doubles import ScriptedPolicy

ln = math.log
A, B, C = "a\n", "b\n", "c\n"
A1, A2, B1, B2 = "a1\n", "a2\n", "b1\n", "b2\n"
X, Y, T = "The answer is 7.\n", "y\n", "The answer is 5.\n"

SCRIPT = {
    (): [(A, ln(0.5)), (B, ln(0.3)), (C, ln(0.2))],
    (A,): [(A1, ln(0.6)), (A2, ln(0.4))],
    (A, A1): [(X, ln(0.9)), (Y, ln(0.1))],
    (A, A1, Y): [(T, ln(0.5))],
    (B,): [(B1, ln(0.6)), (B2, ln(0.4))],
}
VALUES = {A: 0.4, B: 0.6, C: 0.3, A + A1: 0.7, A + A2: 0.2, A + A1 + X: 0.9, A + A1 + Y: 0.3,
          A + A1 + Y + T: 0.1, B + B1: 0.5, B + B2: 0.1}


def critic(state):
    return VALUES.get(state.solution, 0.05)  # unscripted states (the fallback answer)


def run(simulations, **options):
    # the classic MCTS* golden: children fixed after the first expansion (no widening),
    # mean backup, raw Q
    config = dict(root_expansions=3, expansions=2, c_puct=1.0, prior="logprob", parallel_simulations=1,
                  widening=False, backup="mean", q_transform="none", answer_selection="value")
    config.update(options)
    (result,) = treesearch.search(
        [{"id": "golden", "question": "q", "gold": "7"}],
        policy=ScriptedPolicy(SCRIPT),
        critic=critic,
        algorithm="mcts",
        budget=Budget(simulations=simulations),
        **config,
    )
    assert result.error is None
    return result


def node_by_path(tree, *texts):
    node = 0
    for text in texts:
        kids = [int(k) for k in tree.children(node) if tree.text[k] == text]
        assert len(kids) == 1, f"no unique child {text!r} under node {node}"
        node = kids[0]
    return node


def expansion_order(tree):
    """Children are appended in expansion order, so the parents of each new batch of
    nodes are the nodes MCTS expanded, in order (named by their step texts)."""
    order = []
    for i in range(1, len(tree)):
        parent = int(tree.parent[i])
        if not order or order[-1] != parent:
            order.append(parent)
    return ["/".join(t.strip() for t in tree.steps(n)) or "root" for n in order]


def test_expansion_order_follows_hand_computed_puct():
    assert expansion_order(run(5).tree) == ["root", "a", "a/a1", "a/a1/y", "b"]


def test_visits_and_values_after_backup_match_hand_computation():
    tree = run(5).tree
    expected = {  # path: (visits, value_sum)
        (): (5, 0.6 + 0.7 + 0.9 + 0.1 + 0.5),
        (A,): (3, 0.7 + 0.9 + 0.1),
        (A, A1): (3, 0.7 + 0.9 + 0.1),
        (A, A1, X): (1, 0.9),
        (A, A1, Y): (1, 0.1),
        (A, A1, Y, T): (1, 0.1),
        (A, A2): (0, 0.0),
        (B,): (2, 0.6 + 0.5),
        (B, B1): (1, 0.5),
        (B, B2): (0, 0.0),
        (C,): (0, 0.0),
    }
    for path, (visits, value_sum) in expected.items():
        node = node_by_path(tree, *path)
        assert tree.visits[node] == visits, path
        assert tree.value_sum[node] == pytest.approx(value_sum), path
    assert tree.virtual_loss[: len(tree)].sum() == 0
    t = node_by_path(tree, A, A1, Y, T)
    assert tree.duplicates[t] == 1 and tree.prior[t] == pytest.approx(1.0)
    assert tree.closed[node_by_path(tree, A, A1)]
    assert not tree.closed[0]


def test_max_backup_changes_the_fifth_selection():
    # With max backup Q(A) stays .9 after sim 4, so sim 5 picks A again
    # (root sqrt 5: A .9+.5*2.236/4=1.18 > B .935); under A, A1 is closed, so A2 is expanded.
    tree = run(5, backup="max").tree
    assert expansion_order(tree) == ["root", "a", "a/a1", "a/a1/y", "a/a2"]
    assert tree.value(0, "max") == pytest.approx(0.9)
    assert tree.value(node_by_path(tree, A), "max") == pytest.approx(0.9)
    assert tree.value(node_by_path(tree, A, A1, Y), "max") == pytest.approx(0.1)
    assert tree.value(node_by_path(tree, B), "max") == pytest.approx(0.6)


def test_answer_is_best_terminal_by_value():
    result = run(5)
    assert result.answer == "7" and result.correct is True
    assert result.value == pytest.approx(0.9)
    assert result.solution == A + A1 + X
    assert result.accounting.simulations == 5
    assert result.accounting.critic_calls == 3 + 2 + 2 + 1 + 2


def test_terminal_gate_stops_search_early():
    result = run(50, terminal_gate=0.85)
    # sim 3 reaches X with value .9 >= .85: no simulation is launched after it.
    assert result.accounting.simulations == 3
    assert result.answer == "7"
