"""The oracle search benchmark (benchmarks/search_oracle.py): its environment and critic
behave as specified, its found / cut-chain detection is right on hand-built trees, and
`--quick` runs end to end."""

import asyncio
import importlib.util
import itertools
import json
import math
import statistics
import sys
from collections import Counter
from pathlib import Path

import pytest

from treesearch import SamplingParams, State, Task, Tree

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "search_oracle.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_search_oracle", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


so = _load()
TASK = Task()
SAMPLE = SamplingParams(temperature=0.7, max_new_tokens=1000, seed=3)


def state(problem, steps=()):
    return State(problem=problem, prompt="", steps=tuple(steps))


def right_prefix(env, problem, k):
    return [env.right_step(problem, i) for i in range(k)]


def expand(policy, st, n, params=SAMPLE):
    (steps,) = asyncio.run(policy.expand([st], n, params))
    return steps


def complete(policy, st, params):
    (steps,) = asyncio.run(policy.complete([st], params))
    return steps


# ------------------------------------------------------------------------ environment
@pytest.mark.parametrize("p_right", [0.3, 0.5])
def test_right_steps_are_sampled_with_probability_p_right(p_right):
    env = so.OracleEnv(p_right=p_right, wrong_steps=3, concentration=None)
    problem = env.problems(1)[0]
    for k in (0, 2):  # the root and a deeper on-track state
        on_track = state(problem, right_prefix(env, problem, k))
        counts = Counter(s.text for s in expand(so.OraclePolicy(env), on_track, 4000))
        assert len(counts) == 4  # the right step and 3 distinct wrong ones
        share = counts[env.right_step(problem, k)] / 4000
        assert abs(share - p_right) < 4 * math.sqrt(p_right * (1 - p_right) / 4000)
        wrong = [c / 4000 for text, c in counts.items() if text != env.right_step(problem, k)]
        assert all(abs(w - (1 - p_right) / 3) < 0.04 for w in wrong)


def test_off_track_states_continue_uniformly_and_logprobs_are_true_probabilities():
    env = so.OracleEnv(p_right=0.5, wrong_steps=3, concentration=None)
    problem = env.problems(1)[0]
    policy = so.OraclePolicy(env)
    on = expand(policy, state(problem), 400)
    for step in on:
        p = 0.5 if step.text == env.right_step(problem, 0) else 0.5 / 3
        assert step.logprob == pytest.approx(math.log(p))
    wrong = next(s.text for s in on if s.text != env.right_step(problem, 0))
    off = expand(policy, state(problem, [wrong]), 4000)
    counts = Counter(s.text for s in off)
    assert len(counts) == 4 and all(abs(c / 4000 - 0.25) < 0.03 for c in counts.values())
    assert all(s.logprob == pytest.approx(math.log(0.25)) for s in off)


def test_sampling_is_deterministic_given_the_seed_and_state():
    env = so.OracleEnv()
    problem = env.problems(1)[0]
    policy = so.OraclePolicy(env)
    again = lambda seed: [s.text for s in expand(policy, state(problem), 12,  # noqa: E731
                                                  SamplingParams(max_new_tokens=100, seed=seed))]
    assert again(1) == again(1) and again(None) == again(None)
    assert again(1) != again(2)


def test_greedy_returns_the_most_probable_step_n_times():
    for p_right, right_wins in [(0.5, True), (0.3, True), (0.25, False), (0.2, False)]:
        env = so.OracleEnv(p_right=p_right, wrong_steps=3, concentration=None)
        problem = env.problems(1)[0]
        steps = expand(so.OraclePolicy(env), state(problem), 3, SamplingParams(temperature=0, max_new_tokens=100))
        assert len({s.text for s in steps}) == 1
        assert (steps[0].text == env.right_step(problem, 0)) == right_wins
        probs = dict(env.next_steps(problem, ()))
        assert probs[steps[0].text] == max(probs.values())


def test_with_a_concentration_each_state_draws_its_own_distribution():
    env = so.OracleEnv(p_right=0.5, wrong_steps=3, concentration=4.0)
    problems = env.problems(400)
    rights, greedy_right = [], 0
    for problem in problems:
        options = env.next_steps(problem, ())
        probs = [p for _, p in options]
        assert sum(probs) == pytest.approx(1.0) and options[0][0] == env.right_step(problem, 0)
        assert env.next_steps(problem, ()) == options  # the same state, the same distribution
        rights.append(probs[0])
        greedy_right += env.greedy_step(problem, ())[0] == env.right_step(problem, 0)
    # the right step's probability varies by state around p_right (Beta(2, 2): sd 0.22)
    assert abs(statistics.mean(rights) - 0.5) < 0.04 and statistics.pstdev(rights) > 0.15
    # so greedy decoding is right at some states and wrong at others
    assert 0.4 < greedy_right / len(problems) < 0.95


def test_only_the_all_right_chain_answers_gold():
    env = so.OracleEnv(depth=3, wrong_steps=2, wrong_answers=3)
    problem = env.problems(1, offset=7)[0]
    assert problem.gold == "1007"
    chains, answers = 0, Counter()

    def walk(steps):
        nonlocal chains
        options = [text for text, _ in env.next_steps(problem, steps)]
        assert len(set(options)) == len(options) == 3  # distinct texts at every state
        for text in options:
            path = steps + [text]
            assert TASK.is_terminal(text) == (len(path) == env.depth)
            if len(path) < env.depth:
                walk(path)
                continue
            chains += 1
            answer = TASK.extract_answer("".join(path))
            answers[answer] += 1
            assert (answer == problem.gold) == env.on_track(problem, path)

    walk([])
    assert chains == 3**3 and answers[problem.gold] == 1
    assert set(answers) - {problem.gold} <= {str(1007 + i) for i in (1, 2, 3)}


def test_max_new_tokens_is_honoured():
    env = so.OracleEnv(depth=3, step_tokens=20, jitter=0.25)
    problem = env.problems(1)[0]
    policy = so.OraclePolicy(env)
    short = SamplingParams(max_new_tokens=5, seed=0)
    for k in (0, 2):  # a reasoning step and an answer step, both cut
        for step in expand(policy, state(problem, right_prefix(env, problem, k)), 6, short):
            assert step.num_tokens == 5 and step.finish_reason == "length"
            assert not TASK.is_terminal(step.text) and not step.text.endswith("\n")
            assert not env.on_track(problem, right_prefix(env, problem, k) + [step.text])
    whole = complete(policy, state(problem), SamplingParams(max_new_tokens=1000, seed=0))
    assert len(whole) == 3 and TASK.is_terminal(whole[-1].text) and whole[-1].finish_reason == "stop"
    assert all(15 <= s.num_tokens <= 25 for s in whole)  # jitter within +-25%
    cut = complete(policy, state(problem), SamplingParams(max_new_tokens=30, seed=0))
    assert sum(s.num_tokens for s in cut) == 30 and cut[-1].finish_reason == "length"
    counted = sum(s.num_tokens for s in whole) + sum(s.num_tokens for s in cut) + 6 * 5 * 2
    assert policy.generated_tokens == counted


# ---------------------------------------------------------------------------- critic
def test_critic_is_deterministic_and_separates_by_the_gap():
    env = so.OracleEnv(depth=4)
    problems = env.problems(200)
    exact = so.OracleCritic(right_value=0.8, wrong_value=0.2, noise=0.0)
    noisy = so.OracleCritic(right_value=0.8, wrong_value=0.2, noise=0.1)
    right, wrong = [], []
    for problem in problems:
        good = right_prefix(env, problem, 2)
        bad = good[:1] + [env.next_steps(problem, good[:1])[1][0]]
        assert exact.value(env, problem, good) == 0.8 and exact.value(env, problem, bad) == 0.2
        assert noisy.value(env, problem, good) == noisy.value(env, problem, good)
        right.append(noisy.value(env, problem, good))
        wrong.append(noisy.value(env, problem, bad))
    assert abs(sum(right) / 200 - 0.8) < 0.03 and abs(sum(wrong) / 200 - 0.2) < 0.03
    assert all(0 <= v <= 1 for v in right + wrong)
    assert noisy.value(env, problems[0], ()) != so.OracleCritic(noise=0.1, seed=1).value(env, problems[0], ())


def test_critic_options_calibrated_late_and_biased():
    env = so.OracleEnv(depth=4, p_right=0.5)
    problem = env.problems(1)[0]
    bad = [env.next_steps(problem, ())[1][0]]
    calibrated = so.OracleCritic(calibrated=True, noise=0.0, wrong_value=0.3)
    for k in range(5):  # k right steps, the right terminal at k = 4
        expected = 0.3 + 0.7 * 0.5 ** (4 - k)
        assert calibrated.value(env, problem, right_prefix(env, problem, k)) == pytest.approx(expected)
    late = so.OracleCritic(informative_from=3, noise=0.0)
    assert late.value(env, problem, right_prefix(env, problem, 2)) == late.value(env, problem, bad) == 0.5
    assert late.value(env, problem, right_prefix(env, problem, 4)) == 0.7
    biased = so.OracleCritic(wrong_bias=0.25, noise=0.0)
    assert biased.value(env, problem, bad) == pytest.approx(0.55)
    assert biased.value(env, problem, right_prefix(env, problem, 1)) == 0.7


# ------------------------------------------------------------- found / cut detection
def _tree(env, problem, edges):
    """A tree from {parent node: [(text, terminal)]}, added in node-id order."""
    tree = Tree(problem.id)
    for parent in sorted(edges):
        texts = [t for t, _ in edges[parent]]
        tree.add_children(parent, texts, terminal=[term for _, term in edges[parent]])
    return tree


def test_chain_outcome_on_hand_built_trees():
    env = so.OracleEnv(depth=3, wrong_steps=2)
    problem = env.problems(1)[0]
    r = [env.right_step(problem, k) for k in range(3)]
    w0 = env.next_steps(problem, ())[1][0]
    w1 = env.next_steps(problem, r[:1])[1][0]
    w2 = env.next_steps(problem, r[:2])[1][0]
    # root -> r0 (1), w0 (2); r0 -> w1 (3) only: the right step was missed at node 1,
    # and with children fixed there the right chain was cut for good
    cut = _tree(env, problem, {0: [(r[0], False), (w0, False)], 1: [(w1, False)]})
    assert so.chain_outcome(cut, env, problem) == (False, True, True)
    cut.can_widen[1] = True  # node 1 may still widen: missed so far, not cut
    assert so.chain_outcome(cut, env, problem) == (False, False, True)
    # root -> r0 (1), w0 (2); r0 -> r1 (3), w1 (4); r1 not expanded yet: still reachable
    open_ = _tree(env, problem, {0: [(r[0], False), (w0, False)], 1: [(r[1], False), (w1, False)]})
    assert so.chain_outcome(open_, env, problem) == (False, False, False)
    # the right terminal found: not cut, though an off-track node and r1's sibling went wrong
    found = _tree(env, problem, {0: [(r[0], False), (w0, False)], 1: [(r[1], False), (w1, False)],
                                 3: [(w2, True), (r[2], True)]})
    assert so.chain_outcome(found, env, problem) == (True, False, False)
    assert so.chain_outcome(Tree(problem.id), env, problem) == (False, False, False)  # nothing expanded


# -------------------------------------------------------------------- arms and runs
def test_parse_arm_and_values():
    assert [so.parse_value(v) for v in ("3", "0.5", "true", "None", "puct")] == [3, 0.5, True, None, "puct"]
    name, arm = so.parse_arm("mcts_c2=mcts:c_puct=2,expansions=3,terminal_gate=none")
    assert name == "mcts_c2" and arm.algorithm == "mcts"
    assert arm.options == {"c_puct": 2, "expansions": 3, "terminal_gate": None}
    assert arm.selections == {"mcts_c2": "path_mean"}  # the algorithm's default answer selection
    assert so.parse_arm("b=beam")[1].selections == {"b": "value"}
    with pytest.raises(ValueError, match="unknown option"):
        so.parse_arm("x=mcts:no_such_option=1")
    with pytest.raises(ValueError, match="NAME=ALGORITHM"):
        so.parse_arm("mcts")


def test_best_of_n_majority_is_what_self_consistency_answers():
    setting = so.GRIDS["quick"][0]
    (sc,) = so.run_arm(setting, "sc", so.Arm("self_consistency", {}, {"sc": "majority"}), 4, seed=1, count=8)
    read = {p["label"]: p for p in so.run_arm(setting, "best_of_n", so.ARMS["best_of_n"], 4, seed=1, count=8)}
    assert read["self_consistency"]["correct"] == sc["correct"] and read["self_consistency"]["tokens"] == sc["tokens"]
    assert read["best_of_n"]["tokens"] == sc["tokens"]


def test_quick_runs_every_arm_end_to_end(tmp_path, capsys):
    out = tmp_path / "oracle.json"
    report = so.main(["--quick", "--arm", "mcts_c2=mcts:c_puct=2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "oracle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [label for arm in so.ARMS.values() for label in arm.selections] + ["mcts_c2"]
    rows = report["summary"]
    assert sorted((r["label"], r["budget_units"]) for r in rows) == sorted(itertools.product(labels, [2.0, 8.0]))
    for r in rows:
        assert r["n"] == 8 and 0 <= r["accuracy"] <= r["found"] <= 1 and r["tokens_match"]
        assert (r["cut"] is None) == (r["algorithm"] not in so.TREE_ALGORITHMS)
    by = {(r["label"], r["budget_units"]): r for r in rows}
    # one best-of-N run read three ways: the same samples and tokens
    assert by[("self_consistency", 8.0)]["mean_tokens"] == by[("best_of_n", 8.0)]["mean_tokens"]
    assert {(c["budget_units"], c["a"]) for c in report["mcts_vs_best_other"]} == {(2.0, "mcts"), (8.0, "mcts")}
    assert "mcts - " in capsys.readouterr().out
