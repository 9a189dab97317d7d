"""Behaviour of each search algorithm on scripted problems."""

import numpy as np
import pytest

import treesearch
from treesearch import Budget, Problem, Step
from treesearch.types import FINISH_REASONS
from tests.doubles import ScriptedPolicy

PROBLEM = Problem("groups", "There are 3 groups of 3 apples. How many apples?", gold="9")

QUICK, CAREFUL = "Quick guess.\n", "Careful: 3 groups of 3.\n"
MUL, ADD = "3 * 3 = 9.\n", "3 + 3 = 6.\n"
HIDDEN_SCRIPT = {
    (): [(QUICK, -0.05), (CAREFUL, -12.0)],
    (QUICK,): [("The answer is 5.", -0.1), ("The answer is 6.", -2.5)],
    (CAREFUL,): [(ADD, -0.3), (MUL, -1.5)],
    (CAREFUL, MUL): [("The answer is 9.", -0.1)],
    (CAREFUL, ADD): [("The answer is 6.", -0.1)],
}


def hidden_critic(state):
    text = state.solution
    if state.terminal:
        return 0.95 if state.answer == "9" else 0.1
    if MUL in text:
        return 0.9
    if ADD in text:
        return 0.2
    return 0.8 if CAREFUL in text else 0.3


def test_mcts_finds_the_unlikely_branch_the_critic_likes_but_greedy_does_not():
    policy = ScriptedPolicy(HIDDEN_SCRIPT)
    (greedy,) = treesearch.search([PROBLEM], policy=policy, algorithm="greedy", budget=Budget(simulations=1))
    assert greedy.answer == "5" and not greedy.correct
    (mcts,) = treesearch.search(
        [PROBLEM],
        policy=policy,
        critic=hidden_critic,
        algorithm="mcts",
        budget=Budget(simulations=8),
        root_expansions=2,
        expansions=2,
    )
    assert mcts.answer == "9" and mcts.correct
    assert mcts.solution == CAREFUL + MUL + "The answer is 9."
    # the path through the low-prior step was found, not just sampled: its prior is tiny
    careful = [int(k) for k in mcts.tree.children(0) if mcts.tree.text[k] == CAREFUL][0]
    assert mcts.tree.prior[careful] < 0.1 and mcts.tree.visits[careful] >= 2


def test_greedy_follows_the_most_likely_steps_and_accounts_tokens():
    (result,) = treesearch.search([PROBLEM], policy=ScriptedPolicy(HIDDEN_SCRIPT), algorithm="greedy")
    tree = result.tree
    assert result.solution == QUICK + "The answer is 5."
    assert len(tree) == 3 and tree.terminal[2] and tree.answer[2] == "5"
    assert result.accounting.generated_tokens == int(tree.num_tokens[: len(tree)].sum())
    assert result.accounting.policy_calls == 1 and result.accounting.simulations == 1
    assert tree.reward[2] == 0.0  # graded against the gold answer


VOTE_SCRIPT = {(): [("The answer is 4.", -0.2), ("The answer is 5.", -2.0)]}


def run_votes(algorithm, **options):
    (result,) = treesearch.search(
        [Problem("v", "?", gold="5")],
        policy=ScriptedPolicy(VOTE_SCRIPT, mode="sample"),
        critic=lambda s: 1.0 if s.answer == "5" else 0.01,
        algorithm=algorithm,
        budget=Budget(simulations=32),
        samples=32,
        seed=1,
        **options,
    )
    return result


def answer_counts(tree):
    counts = {}
    for k in tree.children(0):
        counts[tree.answer[k]] = counts.get(tree.answer[k], 0) + 1 + int(tree.duplicates[k])
    return counts


def test_self_consistency_majority_counts_every_sample():
    result = run_votes("self_consistency")
    counts = answer_counts(result.tree)
    assert sum(counts.values()) == 32 and result.accounting.simulations == 32
    assert counts["4"] > counts.get("5", 0)
    assert result.answer == "4" and result.candidates["4"] == counts["4"]


def test_best_of_n_weighted_vote_follows_the_critic():
    result = run_votes("best_of_n", answer_selection="weighted")
    counts = answer_counts(result.tree)
    assert counts.get("5", 0) >= 1, "precondition: the seed samples the minority answer"
    assert result.answer == "5"  # one vote of 1.0 for 5 beats ~31 votes of 0.01 for 4
    assert result.candidates["5"] == pytest.approx(counts["5"] * 1.0)
    assert result.candidates["4"] == pytest.approx(counts["4"] * 0.01)


def test_best_of_n_picks_the_best_valued_solution_by_default():
    result = run_votes("best_of_n")
    assert result.answer == "5" and result.value == pytest.approx(1.0)
    assert result.candidates["4"] == pytest.approx(0.01)  # the best value per answer, not a sum


def test_beam_keeps_the_best_children_by_value():
    (result,) = treesearch.search(
        [PROBLEM],
        policy=ScriptedPolicy(HIDDEN_SCRIPT),
        critic=hidden_critic,
        algorithm="beam",
        budget=Budget(simulations=10),
        beam_width=1,
        expansions=2,
    )
    assert result.answer == "9"
    # width 1: only the best child of each level was expanded
    tree = result.tree
    expanded = [i for i in range(len(tree)) if tree.expanded[i]]
    assert ["".join(tree.steps(i)) for i in expanded] == ["", CAREFUL, CAREFUL + MUL]
    assert result.accounting.simulations == 3


def test_beam_search_scores_every_candidate():
    (result,) = treesearch.search(
        [PROBLEM],
        policy=ScriptedPolicy(HIDDEN_SCRIPT),
        critic=hidden_critic,
        algorithm="beam",
        budget=Budget(simulations=10),
        beam_width=2,
        expansions=2,
    )
    tree = result.tree
    assert not np.isnan(tree.critic_value[1 : len(tree)]).any()
    assert result.accounting.critic_calls == len(tree) - 1


def test_search_errors_are_reported_per_problem_without_losing_others():
    def critic(state):
        if "boom" in state.problem.question:
            raise RuntimeError("critic exploded")
        return 0.5

    results = treesearch.search(
        [Problem("ok", "fine?", gold="5"), Problem("bad", "boom?", gold="5")],
        policy=ScriptedPolicy(HIDDEN_SCRIPT),
        critic=critic,
        algorithm="mcts",
        budget=Budget(simulations=4),
    )
    assert results[0].error is None and results[0].answer is not None
    assert "critic exploded" in results[1].error
    assert len(results[1].tree) > 1  # what it built before failing is kept


class FlakyGraderTask(treesearch.Task):
    """A grader that cannot decide answer "7" (as if math-verify timed out)."""

    def grade_outcome(self, pred, gold):
        return None if pred == "7" else self.grade(pred, gold)


def test_odd_model_outputs_are_recorded_on_nodes_and_the_search_goes_on():
    script = {
        (): [
            ("I am not sure what to do", -0.5),  # ends at EOS with no answer
            ("12345678901234567890 and so on forever", -0.6),  # never reaches the delimiter
            ("Half way.\n", -0.7),
        ],
        ("Half way.\n",): [("The answer is 7.", -0.1), ("The answer is 9.", -0.2)],
    }

    class CappedPolicy(ScriptedPolicy):
        async def expand(self, states, n, params):
            out = await super().expand(states, n, params)
            return [[Step(s.text, s.num_tokens, s.logprob, "length") if "forever" in s.text else s for s in steps] for steps in out]

    (result,) = treesearch.search(
        [Problem("odd", "q?", gold="9")],
        policy=CappedPolicy(script),
        critic=lambda s: 0.9 if "Half" in s.solution else 0.2,
        algorithm="mcts",
        task=FlakyGraderTask(),
        budget=Budget(simulations=6),
        root_expansions=3,
        expansions=2,
    )
    tree = result.tree
    by_text = {tree.text[i]: i for i in range(len(tree))}
    no_answer = by_text["I am not sure what to do"]
    assert tree.terminal[no_answer] and tree.answer[no_answer] is None
    endless = by_text["12345678901234567890 and so on forever"]
    assert FINISH_REASONS[tree.finish_reason[endless]] == "length" and not tree.terminal[endless]
    seven, nine = by_text["The answer is 7."], by_text["The answer is 9."]
    assert np.isnan(tree.reward[seven]) and tree.meta["ungraded_nodes"] == [seven]
    assert tree.reward[nine] == 1.0
    assert result.error is None and result.answer in {"7", "9"}


def test_a_solution_that_answers_twice_votes_once():
    # the completion states 5, then carries on to 6: it ends at its first answer
    script = {(): [("The answer is 5.\n", -0.1)], ("The answer is 5.\n",): [("No wait, the answer is 6.", -0.1)]}
    (result,) = treesearch.search(
        [Problem("twice", "q?", gold="5")],
        policy=ScriptedPolicy(script),
        algorithm="self_consistency",
        budget=Budget(simulations=3),
        samples=3,
    )
    tree = result.tree
    terminals = tree.terminal_nodes()
    assert len(terminals) == 1 and tree.answer[terminals[0]] == "5"
    assert tree.duplicates[terminals[0]] == 2 and not tree.expanded[terminals[0]]
    assert result.candidates == {"5": 3.0}
    # the tokens generated after the first answer still count
    assert result.accounting.generated_tokens > int(tree.num_tokens[: len(tree)].sum())


@pytest.mark.parametrize("algorithm", ["self_consistency", "best_of_n"])
@pytest.mark.parametrize("limit", [10, 40, 100])
def test_sampling_waves_shrink_to_the_token_budget_left(algorithm, limit):
    """Whole-solution samplers overrun a token budget by less than max_solution_tokens,
    however many samples they may draw in parallel."""
    from tests.doubles import _step

    solution_tokens = _step(CAREFUL, -1).num_tokens + _step(MUL, -1).num_tokens + _step("The answer is 9.", -1).num_tokens
    policy = ScriptedPolicy(HIDDEN_SCRIPT, mode="sample")
    (result,) = treesearch.search(
        [PROBLEM], policy=policy, critic=hidden_critic, algorithm=algorithm,
        budget=Budget(generated_tokens=limit), samples=64, parallel=16, max_solution_tokens=solution_tokens,
    )
    spent = result.accounting.generated_tokens
    assert limit <= spent < limit + solution_tokens
    assert result.accounting.simulations >= limit // solution_tokens  # the budget, not the wave, stopped it


def test_path_mean_answer_prefers_a_path_that_is_good_all_the_way():
    from treesearch.search.answer import select_answer
    from treesearch.tasks import Task
    from treesearch.tree import Tree

    # A: a poor first step (.2) to a terminal valued .9; B: .7 then a terminal valued .8
    tree = Tree()
    a, b = (int(k) for k in tree.add_children(0, ["a\n", "b\n"]))
    (ta,) = tree.add_children(a, ["The answer is 1."], terminal=[True], answers=["1"])
    (tb,) = tree.add_children(b, ["The answer is 2."], terminal=[True], answers=["2"])
    tree.critic_value[[a, ta, b, tb]] = [0.2, 0.9, 0.7, 0.8]
    by_value = select_answer(tree, Task(), "value")
    by_path = select_answer(tree, Task(), "path_mean")
    assert (by_value.answer, by_value.value) == ("1", pytest.approx(0.9))
    assert (by_path.answer, by_path.node, by_path.value) == ("2", int(tb), pytest.approx(0.75))
    assert by_path.candidates == {"1": pytest.approx(0.55), "2": pytest.approx(0.75)}
    # steps without critic values (a sampler's tree) fall back to the terminal's value
    tree.critic_value[[a, b]] = np.nan
    assert select_answer(tree, Task(), "path_mean").answer == "1"
