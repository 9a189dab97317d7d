"""MCTS* widening against hand-computed trees: which node gets more children, and when.

The policy hands out each prefix's candidates in order across requests (`sequence`
mode), so a widening brings the next candidates of the script. Priors are uniform,
c = 1, Q is the raw mean backup, so PUCT = Q + P * sqrt(N_parent + vl_parent) / (1 + n).
"""

import math

import numpy as np
import pytest

import treesearch
from treesearch import Budget
from tests.doubles import ScriptedPolicy

A, A1, A2, A3, A4 = "a\n", "a1\n", "a2\n", "a3\n", "a4\n"
WRONG1, WRONG2, RIGHT = "The answer is 1.\n", "The answer is 2.\n", "The answer is 7.\n"


def run(script, values, simulations, default_value=0.05, fallback=None, **options):
    config = dict(root_expansions=1, expansions=2, c_puct=1.0, prior="uniform", parallel_simulations=1,
                  widening_alpha=0.0, widening_margin=None, backup="mean", q_transform="none")
    config.update(options)
    policy = ScriptedPolicy(script, mode="sequence", fallback=fallback)
    (result,) = treesearch.search(
        [{"id": "w", "question": "q", "gold": "7"}],
        policy=policy,
        critic=lambda state: values.get(state.solution, default_value),
        algorithm="mcts",
        budget=Budget(simulations=simulations),
        **config,
    )
    assert result.error is None, result.error
    return result, policy


def expansions(policy):
    """The nodes sent to the policy for steps, in order (again each time one is widened)."""
    return ["/".join(t.strip() for t in prefix) or "root" for prefix in policy.expanded]


def child(tree, node, text):
    (kid,) = [int(k) for k in tree.children(node) if tree.text[k] == text]
    return kid


def test_a_node_whose_children_fall_short_of_its_value_is_widened():
    # sim 1: root -> a (.8).  sim 2: a -> a1 (.2), a2 (.3); back up .3.
    # sim 3: a's best child .3 < .8 - .1: widen a by `expansions` -> a3 (.9), a4 (.1).
    # sim 4: a's best child is now .9: no widening; PUCT under a (N 3 + vl 1, sqrt 2,
    #        P .25): a1 .2+.5=.7, a2 .3+.25=.55, a3 .9+.25=1.15, a4 .1+.5=.6 -> expand a3.
    script = {(): [(A, 0.0)], (A,): [(A1, 0.0), (A2, 0.0), (A3, 0.0), (A4, 0.0)], (A, A3): [(RIGHT, 0.0)]}
    values = {A: 0.8, A + A1: 0.2, A + A2: 0.3, A + A3: 0.9, A + A4: 0.1, A + A3 + RIGHT: 0.95}
    result, policy = run(script, values, 3, widening_margin=0.1)
    tree = result.tree
    a = child(tree, 0, A)
    assert [tree.text[k] for k in tree.children(a)] == [A1, A2, A3, A4]
    assert tree.samples[a] == 4 and tree.prior[tree.children(a)].sum() == pytest.approx(1.0)
    assert expansions(policy) == ["root", "a", "a"]
    assert tree.visits[child(tree, a, A3)] == 1 and tree.value_sum[child(tree, a, A3)] == pytest.approx(0.9)

    result, policy = run(script, values, 4, widening_margin=0.1)
    assert expansions(policy) == ["root", "a", "a", "a/a3"]
    assert result.answer == "7"


def test_without_a_margin_the_same_node_is_not_widened():
    script = {(): [(A, 0.0)], (A,): [(A1, 0.0), (A2, 0.0), (A3, 0.0), (A4, 0.0)]}
    values = {A: 0.8, A + A1: 0.2, A + A2: 0.3}
    result, policy = run(script, values, 4, widening_margin=None)
    # sim 3 under a (N 2 + vl 1, sqrt 1.732): a1 .2+.5*1.732=1.07 > a2 .3+.5*1.732/2=.73
    assert expansions(policy) == ["root", "a", "a/a1", "a/a2"]


def test_a_node_whose_children_are_all_closed_stays_open_and_widens():
    # a's first two answers are wrong terminals (closed). Without widening, a and then
    # the root close and the search stops; with it, a is widened and the right answer
    # (the third candidate) is found.
    script = {(): [(A, 0.0)], (A,): [(WRONG1, 0.0), (WRONG2, 0.0), (RIGHT, 0.0)]}
    values = {A: 0.6, A + WRONG1: 0.1, A + WRONG2: 0.2, A + RIGHT: 0.9}
    fixed, _ = run(script, values, 10, widening=False)
    assert fixed.tree.closed[0] and fixed.answer == "2" and fixed.accounting.simulations == 2
    widened, policy = run(script, values, 3)
    a = child(widened.tree, 0, A)
    assert not widened.tree.closed[a] and widened.tree.can_widen[a]
    assert expansions(policy) == ["root", "a", "a"]
    assert widened.answer == "7" and widened.correct


def test_progressive_widening_follows_k0_times_visits_to_the_alpha():
    # Root: k0 = 1, alpha = .5: the root may have drawn ceil(N ** .5) samples after N
    # visits, so simulation k (root visits k - 1) widens it at k = 3, 6 and 11.
    # Every prefix has new steps to give, so every simulation expands or widens something
    # and backs up (the root has k visits after k simulations).
    def script(prefix):
        return [(f"{len(prefix)}.{j}\n", 0.0) for j in range(64)]

    for sims, samples in [(2, 1), (3, 2), (5, 2), (6, 3), (10, 3), (11, 4)]:
        result, _ = run(script, {}, sims, default_value=0.5, widening_alpha=0.5)
        assert result.tree.visits[0] == sims
        assert result.tree.samples[0] == samples, sims
        assert result.tree.num_children[0] == samples, sims


def test_a_node_stops_widening_when_no_unseen_step_is_left_to_expect():
    # The root's policy knows two steps, both wrong answers (closed), so the root keeps
    # widening by 2 samples, which merge into the two children. After 8 samples with
    # none seen once, the Good-Turing chance of an unseen step, (0 + 1) / (8 + 1), is
    # below 1/8: the root stops widening, closes, and the search ends.
    script = {(): [(WRONG1, 0.0), (WRONG2, 0.0)]}
    values = {WRONG1: 0.1, WRONG2: 0.2}
    result, policy = run(script, values, 50, root_expansions=2)
    tree = result.tree
    assert tree.num_children[0] == 2 and tree.samples[0] == 8
    assert list(tree.duplicates[tree.children(0)]) == [3, 3]
    assert not tree.can_widen[0] and tree.closed[0]
    assert expansions(policy) == ["root"] * 4 and result.accounting.simulations == 4
    # each widening that drew only known steps ended at the best child drawn again
    # (the answer 2, valued .2) and backed its value up: 4 visits for the root and it
    assert tree.visits[0] == 4 and list(tree.visits[tree.children(0)]) == [0, 4]


def test_progressive_widening_is_for_the_root_valued_nodes_widen_by_margin():
    # An inner node has a critic value, so visits alone do not widen it (alpha has no
    # effect there): with children as good as it and no margin trigger, each inner node
    # keeps its first expansion's 2 samples.
    def script(prefix):
        return [(f"{len(prefix)}.{j}\n", 0.0) for j in range(64)]

    result, _ = run(script, {}, 12, default_value=0.5, widening_alpha=1.0, widening_margin=0.1)
    tree = result.tree
    assert tree.samples[0] == 11  # the root: ceil(N) samples after N visits (alpha 1)
    inner = [k for k in range(1, len(tree)) if tree.expanded[k]]
    assert inner and all(tree.samples[k] == 2 for k in inner)


def test_widening_links_children_added_after_other_nodes():
    # a is widened after a2 was expanded, so a's children come in two batches that are
    # not contiguous; selection, values and the saved tree all follow the links.
    script = {(): [(A, 0.0)], (A,): [(A1, 0.0), (A2, 0.0), (A3, 0.0), (A4, 0.0)],
              (A, A2): [(WRONG1, 0.0)]}
    values = {A: 0.8, A + A1: 0.2, A + A2: 0.75, A + A2 + WRONG1: 0.05, A + A3: 0.9, A + A4: 0.1}
    result, policy = run(script, values, 4, widening_margin=0.1)
    tree = result.tree
    a = child(tree, 0, A)
    kids = tree.children(a).tolist()
    assert [tree.text[k] for k in kids] == [A1, A2, A3, A4]
    assert kids[2] != kids[1] + 1, "the second batch should not follow the first directly"
    assert expansions(policy) == ["root", "a", "a/a2", "a"]
    loaded = treesearch.Tree.from_arrow(tree.to_arrow())
    assert loaded.equals(tree) and loaded.children(a).tolist() == kids


def test_a_widening_draws_by_visits_only_at_a_node_without_a_value():
    # The root (no critic value) may catch up to ceil(k0 * N ** alpha) samples at once; a
    # valued node widened because its children fell short draws one expansion's worth,
    # however many visits it has.
    from treesearch.search import make_algorithm
    from treesearch.tree import Tree

    algorithm = make_algorithm("mcts", root_expansions=1, expansions=2, widening_alpha=1.0, widening_margin=0.1)
    wanted = algorithm.config.widening_rule().samples_wanted
    tree = Tree("w", "q")
    (a,) = tree.add_children(0, [A])
    tree.critic_value[a] = 0.8
    tree.add_children(a, [A1, A2])
    tree.samples[0], tree.samples[a] = 1, 2
    tree.visits[0], tree.visits[a] = 9, 8
    assert wanted(tree, 0) == 8  # ceil(1 * 9) - 1
    assert wanted(tree, a) == 2  # not ceil(2 * 8) - 2 = 14
    (b,) = tree.add_children(a, [A3], extend=True)
    assert wanted(tree, b) == 2  # a first expansion
    # a saturated (paced) valued node draws at most one expansion's worth, however far
    # its visits have run ahead: here its allowance is ceil(1.0 * 400) = 400 samples
    tree.widen_k[a], tree.visits[a], tree.samples[a] = 1.0, 400, 8
    assert wanted(tree, a) == 2
    tree.samples[a] = 399  # one short of the allowance: one step
    assert wanted(tree, a) == 1


def endless(prefix):
    """New non-terminal steps for any prefix not in a script (subtrees that stay open)."""
    return [(f"{len(prefix)}.{j}\n", 0.0) for j in range(64)]


def test_a_saturated_node_with_open_children_is_paced_by_its_visits_not_cut():
    # a's policy draws a1, a2, a1, a2, ... (8 draws) and only then a3, the right step.
    # Both a1 and a2 stay open (endless subtrees), both fall short of a's value.
    # sim 1 root -> a; 2 expand a (a1, a2); 3 the root widens (ceil(2 ** .5) = 2 samples
    # after 2 visits) and draws a again; 4, 5 widen a by margin (+2 each: 6 samples);
    # 6 the root widens again (ceil(5 ** .5) = 3); 7 widens a to 8 samples, none seen
    # once: saturated at its 6th visit. It is paced from there and resumes once its
    # visits have doubled: widen_k = 8 / 12 ** .5, so its 13th visit (sim 14) allows
    # ceil(widen_k * 13 ** .5) = 9 samples: one more draw, a3. Meanwhile (sims 8-13) the
    # search descends into a1 and a2, and the root widens once more.
    script = {(): [(A, 0.0)], (A,): [(A1, 0.0), (A2, 0.0)] * 4 + [(A3, 0.0)], (A, A3): [(RIGHT, 0.0)]}
    values = {A: 0.8, A + A1: 0.2, A + A2: 0.3, A + A3: 0.9, A + A3 + RIGHT: 0.95}
    options = dict(fallback=endless, expansions=2, widening_alpha=0.5, widening_margin=0.1)
    result, policy = run(script, values, 15, **options)
    tree = result.tree
    a = child(tree, 0, A)
    assert expansions(policy) == ["root", "a", "root", "a", "a", "root", "a", "a/a1", "a/a1", "a/a2", "root",
                                  "a/a1", "a/a2", "a", "a/a3"]
    assert tree.widen_k[a] == pytest.approx(8 / 12 ** 0.5) and tree.can_widen[a]
    assert [tree.text[k] for k in tree.children(a)] == [A1, A2, A3] and tree.samples[a] == 9
    assert result.answer == "7" and result.correct
    # paced, never ahead of its allowance
    assert tree.samples[a] <= math.ceil(tree.widen_k[a] * tree.visits[a] ** 0.5)

    # widening_alpha 0: no pacing, a saturated node stops for good and the right step is cut
    result, policy = run(script, values, 30, **dict(options, widening_alpha=0.0))
    a = child(result.tree, 0, A)
    assert not result.tree.can_widen[a] and np.isnan(result.tree.widen_k[a]) and result.tree.samples[a] == 8
    assert A3 not in [result.tree.text[k] for k in result.tree.children(a)] and result.answer != "7"


def test_a_node_with_nothing_open_below_widens_at_the_progressive_pace_else_is_revisited():
    # a (valued .3) has one child, a wrong answer (closed) as good as a promised. With
    # alpha .5 it may hold ceil(1 * N ** .5) samples after N visits: at 1 visit it is
    # visited as it stands (REVISIT), at 2 it is due a second sample (WIDEN).
    from treesearch import kernels
    from treesearch.search.selection import Descent
    from treesearch.search.widening import Widening
    from treesearch.tree import Tree

    def outcome(tree, **widening):
        descent = Descent(c=1.0, widening=Widening(**{"k0_root": 1, "k0": 1, "alpha": 0.5, "margin": 0.1, **widening}))
        chosen, how = descent.run(tree, 0)
        tree.virtual_loss[chosen] -= 1
        return chosen, how

    tree = Tree("w", "q")
    (a,) = tree.add_children(0, [A])
    (wrong,) = tree.add_children(a, [WRONG1])
    tree.critic_value[a], tree.critic_value[wrong] = 0.3, 0.3
    tree.can_widen[[0, a]] = True
    tree.samples[0], tree.samples[a] = 10, 1  # the root is not due a widening here
    tree.close(wrong)
    assert not tree.closed[a]
    tree.backup([0, a], 0.3)
    assert outcome(tree) == ([a], kernels.REVISIT)
    tree.backup([0, a], 0.3)
    assert outcome(tree) == ([a], kernels.WIDEN)
    tree.samples[a] = 2
    assert outcome(tree) == ([a], kernels.REVISIT)
    assert outcome(tree, alpha=0.0) == ([a], kernels.WIDEN)  # no pace to wait for
    tree.critic_value[a] = 0.8  # its child now falls short of it by more than the margin
    assert outcome(tree) == ([a], kernels.WIDEN)
    tree.widen_k[a] = 2 / 8 ** 0.5  # saturated: its own pace, ceil(widen_k * N ** .5)
    assert outcome(tree) == ([a], kernels.REVISIT)  # 2 visits: allowance 1
    tree.visits[a] = 9  # allowance ceil(2 * (9 / 8) ** .5) = 3
    assert outcome(tree) == ([a], kernels.WIDEN)


def test_a_saturated_node_whose_children_all_ended_is_revisited_not_cut():
    # a's policy draws the wrong answers 1, 2, 1, 2, ... (8 draws) and only then the
    # right answer. Its children all end (closed) and fall short of its value. Once
    # saturated it used to stop widening for good, closing a and cutting the right answer;
    # now it is paced: visited as it stands at no token cost until its visits have
    # doubled, then widened again, which draws the right answer.
    script = {(): [(A, 0.0)], (A,): [(WRONG1, 0.0), (WRONG2, 0.0)] * 4 + [(RIGHT, 0.0)]}
    values = {A: 0.8, A + WRONG1: 0.1, A + WRONG2: 0.2, A + RIGHT: 0.9}
    options = dict(expansions=2, widening_alpha=0.5, widening_margin=0.1)
    result, policy = run(script, values, 40, **options)
    tree = result.tree
    a = child(tree, 0, A)
    kids = tree.children(a)
    assert not np.isnan(tree.widen_k[a]) and tree.can_widen[a]
    assert RIGHT in [tree.text[k] for k in kids] and result.answer == "7" and result.correct
    # revisits: simulations that ended at a itself, beyond its creation and the widenings
    # that drew only known answers (one per duplicate)
    assert tree.visits[a] - tree.visits[kids].sum() > 1 + tree.duplicates[kids].sum()

    # widening_alpha 0: no pacing, a stops widening once saturated and the answer is cut
    result, _ = run(script, values, 40, **dict(options, widening_alpha=0.0))
    a = child(result.tree, 0, A)
    assert result.tree.closed[a] and not result.tree.can_widen[a] and result.answer != "7"


def test_a_saturated_node_whose_ended_children_are_as_good_as_it_promised_stops():
    # Like the test above, but a's answers are as good as a promised (a .3, answers .3
    # and .25: none below .3 - margin): nothing is left to look for there, so once
    # saturated a stops widening for good, closes, and the right answer is not drawn.
    script = {(): [(A, 0.0)], (A,): [(WRONG1, 0.0), (WRONG2, 0.0)] * 4 + [(RIGHT, 0.0)]}
    values = {A: 0.3, A + WRONG1: 0.3, A + WRONG2: 0.25, A + RIGHT: 0.9}
    result, _ = run(script, values, 40, expansions=2, widening_alpha=0.5, widening_margin=0.1)
    tree = result.tree
    a = child(tree, 0, A)
    assert tree.samples[a] == 8 and not tree.can_widen[a] and tree.closed[a]
    assert RIGHT not in [tree.text[k] for k in tree.children(a)] and result.answer != "7"
