"""Harvest: value targets on hand-built trees, rows, files, and that TRL accepts them."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

import treesearch
from treesearch import Budget, Problem
from treesearch.harvest import (
    best_continuation,
    harvest,
    preference_pairs,
    prm_rows,
    rank_sft,
    sft_candidates,
    without_demonstrations,
)
from treesearch.value_targets import hard_values, inferred_values, mc_values, mixed_values, value_targets
from treesearch.harvest_cli import main as harvest_main
from treesearch.runfolder import RunFolder
from treesearch.search.budget import Accounting
from treesearch.tree import Tree
from treesearch.result import SearchResult
from tests.doubles import ScriptedPolicy

NAN = math.nan
PROMPT = [
    {"role": "system", "content": "Solve step by step."},
    {"role": "user", "content": "What is 2 + 3?"},
]


def fig_tree(problem_id: str = "fig") -> Tree:
    """The hand-built tree the value tests work on (✓ correct, ✗ wrong terminal):

        0 root
        ├─ 1 A
        │  ├─ 5 A1 ✓   (duplicates=2: stands for 3 samples)
        │  └─ 6 A2 ✗
        ├─ 2 B
        │  ├─ 7 B1
        │  │  └─ 10 B1a ✓
        │  ├─ 8 B2
        │  │  └─ 11 B2a ✗
        │  └─ 9 B3      closed dead end (expanded, no steps came)
        ├─ 3 C          open leaf, never expanded
        └─ 4 D          terminal, ungraded (reward NaN)
    """
    t = Tree(problem_id, PROMPT)
    t.add_children(0, ["A\n", "B\n", "C\n", "D: answer 7"], terminal=[False, False, False, True], answers=[None, None, None, "7"])
    t.add_children(1, ["A1: answer 5", "A2: answer 6"], terminal=[True, True], answers=["5", "6"], duplicates=[2, 0])
    t.add_children(2, ["B1\n", "B2\n", "B3\n"])
    t.add_children(7, ["B1a: answer 5"], terminal=[True], answers=["5"])
    t.add_children(8, ["B2a: answer 4"], terminal=[True], answers=["4"])
    t.add_children(9, [])
    for node in (4, 5, 6, 9, 10, 11):
        t.close(node)
    t.reward[[5, 10]] = 1.0
    t.reward[[6, 11]] = 0.0
    return t


# ------------------------------------------------------------------ inferred values
def test_inferred_values_by_hand():
    # v_k = max(v_{k-1} + (1 - v_{k-1}) * r_k / (m_k + 1), 0), v_0 = 0.
    # m (fewest steps to a correct terminal): A1=0, B1a=0, A=1, B1=1, B=2.
    # Wrong nodes take m of the nearest ancestor with a correct terminal below:
    # A2 -> m(A)=1; B2, B3, B2a -> m(B)=2.
    expected = {
        0: 0.0,  # v_0
        1: 0.5,  # A:   0 + 1 * (+1) / (1 + 1)
        2: 1 / 3,  # B:   0 + 1 * (+1) / (2 + 1)
        3: NAN,  # C:   open leaf, nothing decided below
        4: NAN,  # D:   ungraded terminal
        5: 1.0,  # A1:  1/2 + 1/2 * (+1) / (0 + 1)
        6: 0.25,  # A2:  1/2 + 1/2 * (-1) / (1 + 1)
        7: 2 / 3,  # B1:  1/3 + 2/3 * (+1) / (1 + 1)
        8: 1 / 9,  # B2:  1/3 + 2/3 * (-1) / (2 + 1) = 3/9 - 2/9
        9: 1 / 9,  # B3:  same as B2 (a dead end is a failed end)
        10: 1.0,  # B1a: 2/3 + 1/3 * (+1) / (0 + 1)
        11: 0.0,  # B2a: max(1/9 + 8/9 * (-1) / 3, 0) = max(-5/27, 0)
    }
    values = inferred_values(fig_tree())
    assert values.dtype == np.float64 and values.shape == (12,)
    np.testing.assert_allclose(values, [expected[i] for i in range(12)], rtol=0, atol=1e-12)


def test_inferred_values_without_a_correct_end_are_zero_and_without_grades_nan():
    t = fig_tree()
    t.reward[[5, 10]] = 0.0  # nothing correct: every r is -1, v stays at v_0 = 0
    values = inferred_values(t)
    decided = [0, 1, 2, 5, 6, 7, 8, 9, 10, 11]
    assert np.all(values[decided] == 0.0)
    assert np.isnan(values[[3, 4]]).all()
    t.reward[:] = np.nan  # no gold: only the dead end is decided (a failure)
    values = inferred_values(t)
    assert values[0] == 0.0 and values[2] == 0.0 and values[9] == 0.0
    assert np.isnan(values[[1, 3, 4, 5, 6, 7, 8, 10, 11]]).all()


def random_tree(rng: random.Random) -> Tree:
    t = Tree("r", "q")
    frontier = [0]
    while frontier and len(t) < 60:
        node = frontier.pop(rng.randrange(len(frontier)))
        k = rng.randint(0, 3)
        terminal = [rng.random() < 0.4 for _ in range(k)]
        ids = t.add_children(node, [f"s{len(t) + j}\n" for j in range(k)], terminal=terminal)
        if k == 0:
            t.close(node)
        for child, term in zip(ids, terminal):
            if term:
                t.reward[child] = rng.choice([0.0, 1.0, 1.0, NAN])
                t.close(int(child))
            else:
                frontier.append(int(child))
    return t


def test_inferred_values_stay_in_unit_interval_and_rise_along_correct_paths():
    rng = random.Random(7)
    for _ in range(60):
        t = random_tree(rng)
        v = inferred_values(t)
        finite = v[~np.isnan(v)]
        assert np.all((finite >= 0) & (finite <= 1))
        correct = t.terminal_nodes()[t.reward[t.terminal_nodes()] == 1]
        assert np.all(v[correct] == 1.0)
        for node in correct:  # r = +1 all along a correct path: values rise to 1
            path = v[t.path(int(node))]
            assert np.all(np.diff(path) > 0)


# -------------------------------------------------------------------------- MC values
def test_mc_values_count_duplicates_and_skip_ungraded():
    values = mc_values(fig_tree())
    # A1 stands for 3 samples (duplicates=2), A2 for 1: A = 3/4; B: B1a ✓, B2a ✗ -> 1/2;
    # root: (3 + 1) correct of (3 + 1 + 1 + 1) graded samples = 4/6. C, D, B3: NaN.
    expected = [4 / 6, 3 / 4, 1 / 2, NAN, NAN, 1, 0, 1, 0, NAN, 1, 0]
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)


def test_hard_and_mixed_values_by_hand():
    t = fig_tree()
    # hard: 1 with a correct terminal below, 0 with decided ends and none correct (B3 is a
    # dead end, B2 ends in a wrong answer); C (open) and D (ungraded) undecided; root NaN.
    np.testing.assert_array_equal(hard_values(t), [NAN, 1, 1, NAN, NAN, 1, 0, 1, 0, 0, 1, 0])
    # mixed: mean of mc [4/6, 3/4, 1/2, -, -, 1, 0, 1, 0, -, 1, 0] and inferred
    # [0, 1/2, 1/3, -, -, 1, 1/4, 2/3, 1/9, 1/9, 1, 0]; B3 has only an inferred value.
    expected = [1 / 3, 5 / 8, 5 / 12, NAN, NAN, 1, 1 / 8, 5 / 6, 1 / 18, 1 / 9, 1, 0]
    np.testing.assert_allclose(mixed_values(t), expected, rtol=0, atol=1e-12)
    assert np.array_equal(value_targets(t, "hard"), hard_values(t), equal_nan=True)
    with pytest.raises(ValueError, match="hard"):
        value_targets(t, "soft")


def test_hard_targets_give_a_rare_right_step_full_credit_on_a_mostly_failing_tree():
    t = Tree("mostly-wrong", PROMPT)
    t.add_children(0, ["good\n", "bad\n"])
    answers = [str(i) for i in range(10)]
    t.add_children(1, [f"answer {a}" for a in answers], terminal=[True] * 10, answers=answers)
    t.add_children(2, ["answer 42", "answer 43"], terminal=[True, True], answers=["42", "43"])
    for node in range(3, len(t)):
        t.close(node)
    t.reward[3:] = 0.0
    t.reward[3] = 1.0  # one right answer in twelve
    mc, hard = mc_values(t), hard_values(t)
    assert mc[1] == pytest.approx(0.1) and mc[2] == 0.0  # squeezed near 0
    assert hard[1] == 1.0 and hard[2] == 0.0


# ------------------------------------------------------------------------------- rows
def test_prm_rows_follow_paths_and_cut_at_nan():
    t = fig_tree()
    rows = prm_rows(t, inferred_values(t))
    # ends: D (NaN at its first step: no row), A1, A2, B3, B1a, B2a
    assert [r["completions"] for r in rows] == [
        ["A\n", "A1: answer 5"],
        ["A\n", "A2: answer 6"],
        ["B\n", "B3\n"],
        ["B\n", "B1\n", "B1a: answer 5"],
        ["B\n", "B2\n", "B2a: answer 4"],
    ]
    np.testing.assert_allclose(
        [x for r in rows for x in r["labels"]],
        [0.5, 1, 0.5, 0.25, 1 / 3, 1 / 9, 1 / 3, 2 / 3, 1, 1 / 3, 1 / 9, 0],
        atol=1e-12,
    )
    assert all(isinstance(x, float) for r in rows for x in r["labels"])
    # MC: B3 has no graded terminal below, so its path is cut to [B], which the B1a and
    # B2a rows already cover: dropped.
    mc_rows = prm_rows(t, mc_values(t))
    assert [r["completions"][-1] for r in mc_rows] == ["A1: answer 5", "A2: answer 6", "B1a: answer 5", "B2a: answer 4"]
    assert mc_rows[0]["labels"] == [0.75, 1.0]


def test_preference_pairs_from_siblings_with_margin():
    t = fig_tree()
    v = inferred_values(t)
    pairs = preference_pairs(t, v, margin=0.2)
    # root: A (1/2) vs B (1/3) differ by 1/6 < 0.2; C, D are NaN.
    # under A: A1 (1) vs A2 (1/4). Under B: B1 (2/3) vs B2 (1/9) and vs B3 (1/9); B2 = B3.
    got = [(p["prefix"], p["chosen_step"], p["rejected_step"]) for p in pairs]
    assert got == [("A\n", "A1: answer 5", "A2: answer 6"), ("B\n", "B1\n", "B2\n"), ("B\n", "B1\n", "B3\n")]
    assert pairs[0]["chosen_value"] == 1.0 and pairs[0]["rejected_value"] == 0.25
    # completions continue each step along its best-valued path to a leaf
    assert pairs[1]["chosen_text"] == "B\nB1\nB1a: answer 5"
    assert pairs[1]["rejected_text"] == "B\nB2\nB2a: answer 4"
    assert pairs[2]["rejected_text"] == "B\nB3\n"
    # margins: exactly 5/9 still pairs B1 with B2/B3; 0.1 adds A vs B at the root
    assert len(preference_pairs(t, v, margin=5 / 9)) == 3
    assert len(preference_pairs(t, v, margin=0.6)) == 1
    root_pair = [p for p in preference_pairs(t, v, margin=0.1) if p["prefix"] == ""]
    assert [(p["chosen_step"], p["rejected_step"]) for p in root_pair] == [("A\n", "B\n")]
    assert root_pair[0]["chosen_text"] == "A\nA1: answer 5"
    # min_visits: siblings with fewer visits sit out
    t.visits[[5, 6, 7, 8]] = [3, 1, 2, 2]
    pairs = preference_pairs(t, v, margin=0.2, min_visits=2)
    assert [(p["chosen_step"], p["rejected_step"]) for p in pairs] == [("B1\n", "B2\n")]


def test_best_continuation_follows_the_highest_target():
    t = fig_tree()
    v = inferred_values(t)
    assert best_continuation(t, 2, v) == [7, 10]
    assert best_continuation(t, 0, v) == [1, 5]
    assert best_continuation(t, 5, v) == []


def sft_tree(problem_id: str, branches: list[tuple[list[str], float, float]]) -> Tree:
    """A tree whose root children start the given branches: (steps, reward, critic value
    of the last step); each branch is a chain."""
    t = Tree(problem_id, PROMPT)
    ids = t.add_children(0, [steps[0] for steps, _, _ in branches], terminal=[len(s) == 1 for s, _, _ in branches])
    for node, (steps, reward, value) in zip(ids, branches):
        node = int(node)
        for i, text in enumerate(steps[1:], start=2):
            (node,) = t.add_children(node, [text], terminal=[i == len(steps)])
            node = int(node)
        t.reward[node] = reward
        t.critic_value[node] = value
        t.close(node)
    return t


ANSWER = "The answer is 5."
RUN1_BRANCHES = [
    (["Add 2 and 3.\n", "2 + 3 = 5.\n", ANSWER], 1.0, 0.9),
    (["Add 2 and 3.\n", "The answer is 6."], 0.0, 0.95),  # best value but wrong: not SFT
    (["2 + 3 = 5.\n", ANSWER], 1.0, 0.7),
    ([ANSWER], 1.0, 0.5),
]
RUN2_BRANCHES = [
    (["2 + 3 = 5.\n", ANSWER], 1.0, 0.8),  # same text as a run-1 trace, higher value
    (["Add 2 and 3.\n2 + 3 = 5.\n", ANSWER], 1.0, 0.9),  # same text as the best run-1 trace
]


def test_sft_top_k_dedups_by_solution_text():
    cands = []
    for branches in (RUN1_BRANCHES, RUN2_BRANCHES):
        t = sft_tree("p", branches)
        cands += sft_candidates(t, inferred_values(t))
    assert len(cands) == 5  # the wrong trace is not a candidate
    top = rank_sft(cands, top_k=4)
    assert [(c["solution"], c["value"]) for c in top] == [
        ("Add 2 and 3.\n2 + 3 = 5.\nThe answer is 5.", pytest.approx(0.9)),  # tie at 0.9: fewer steps wins
        ("2 + 3 = 5.\nThe answer is 5.", pytest.approx(0.8)),  # run 2's copy beats run 1's 0.7
        ("The answer is 5.", pytest.approx(0.5)),
    ]
    assert top[0]["depth"] == 2  # run 2's two-step copy, not run 1's three steps
    assert [c["value"] for c in rank_sft(cands, top_k=2)] == [pytest.approx(0.9), pytest.approx(0.8)]


def test_sft_value_falls_back_to_the_mean_path_target():
    t = fig_tree()  # never searched: no visits, no critic values
    cands = rank_sft(sft_candidates(t, inferred_values(t)), top_k=4)
    # A1: mean(1/2, 1) = 3/4; B1a: mean(1/3, 2/3, 1) = 2/3
    assert [(c["node"], c["value"]) for c in cands] == [(5, pytest.approx(0.75)), (10, pytest.approx(2 / 3))]


# ------------------------------------------------------------------------ run folders
def write_run(folder, trees: list[Tree], task: str = "numeric") -> None:
    """A run folder as jobs.py writes it: manifest, config.yaml, results and trees."""
    run = RunFolder(folder)
    run.path.mkdir(parents=True, exist_ok=True)
    run.claim([t.problem_id for t in trees], "digest")
    (run.path / "config.yaml").write_text(f"task:\n  name: {task}\n  limit: 2\nsearch:\n  algorithm: mcts\n")
    for t in trees:
        problem = Problem(t.problem_id, "What is 2 + 3?", gold="5")
        result = SearchResult(problem, "5", True, "mcts", "value", 0.9, ANSWER, t, Accounting())
        run.write_result(result)


@pytest.fixture
def two_runs(tmp_path):
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    write_run(run1, [sft_tree("p", RUN1_BRANCHES), fig_tree("fig")])
    write_run(run2, [sft_tree("p", RUN2_BRANCHES)])
    return [run1, run2]


def test_harvest_writes_files_that_load_with_their_features(two_runs, tmp_path):
    import datasets

    out = tmp_path / "out"
    paths = harvest(two_runs, out, top_k=2, values="inferred")  # the hand-computed targets below are inferred
    from treesearch.harvest import load_table

    assert len(load_table(out, "prm")) == len(datasets.load_dataset("parquet", data_files=str(paths["prm"]),
                                                                   split="train"))
    assert {k: p.name for k, p in paths.items()} == {
        "sft": "sft.parquet",
        "prm": "prm.parquet",
        "preference": "preference.parquet",
        "manifest": "harvest.json",
    }
    load = lambda name: datasets.load_dataset("parquet", data_files=str(paths[name]), split="train")  # noqa: E731
    prm, sft, pref = load("prm"), load("sft"), load("preference")

    assert prm.features["labels"] == datasets.List(datasets.Value("float64"))
    assert prm.features["completions"] == datasets.List(datasets.Value("string"))
    assert prm.features["prompt"] == datasets.Value("string")
    fig_rows = [r for r in prm if r["problem_id"] == "fig"]
    assert fig_rows[1]["labels"] == [0.5, 0.25] and set(prm["source"]) == {"inferred"}
    assert fig_rows[0]["prompt"] == "Solve step by step.\n\nWhat is 2 + 3?"
    assert fig_rows[0]["prompt_messages"] == PROMPT

    message = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    for column in ("prompt", "completion", "messages"):
        assert sft.features[column] == message
    p_rows = [r for r in sft if r["problem_id"] == "p"]
    assert [r["completion"][0]["content"] for r in p_rows] == [
        "Add 2 and 3.\n2 + 3 = 5.\nThe answer is 5.",
        "2 + 3 = 5.\nThe answer is 5.",
    ]
    assert p_rows[0]["run"] == p_rows[1]["run"] == "run2"  # the folder's name, not a local path
    assert p_rows[0]["prompt"] == PROMPT
    assert p_rows[0]["messages"] == PROMPT + p_rows[0]["completion"]
    assert [r["node"] for r in sft if r["problem_id"] == "fig"] == [5, 10]

    for column in ("prompt", "chosen", "rejected"):
        assert pref.features[column] == message
    fig_pairs = [r for r in pref if r["problem_id"] == "fig"]
    assert fig_pairs[0]["chosen"] == [{"role": "assistant", "content": "A\nA1: answer 5"}]
    assert fig_pairs[0]["prompt"] == PROMPT

    record = json.loads(paths["manifest"].read_text())
    assert record["counts"]["prm"] == len(prm) and record["counts"]["sft"] == len(sft) == 4
    assert record["counts"]["preference"] == len(pref) and record["counts"]["problems"] == 2
    assert [r["path"] for r in record["runs"]] == [str(p.resolve()) for p in two_runs]
    assert [r["name"] for r in record["runs"]] == ["run1", "run2"]
    assert record["runs"][0]["trees"] == 2 and record["runs"][0]["task"] == "numeric"
    assert record["parameters"] == {"top_k": 2, "values": "inferred", "margin": 0.2, "min_visits": 0, "labels": "gold",
                                    "reject_lucky": "arithmetic", "prompts": "searched"}
    default = harvest(two_runs, tmp_path / "default")  # Monte Carlo targets unless asked otherwise
    assert json.loads(default["manifest"].read_text())["parameters"]["values"] == "mc"
    assert set(datasets.load_dataset("parquet", data_files=str(default["prm"]), split="train")["source"]) == {"mc"}


def test_harvest_mc_source_and_empty_tables(tmp_path):
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    t = fig_tree("fig")
    t.reward[:] = np.nan  # no gold: no SFT traces, no MC targets
    write_run(run, [t])
    paths = harvest([run], tmp_path / "out", values="mc")
    assert pq.read_table(paths["sft"]).num_rows == 0
    assert pq.read_table(paths["prm"]).num_rows == 0
    assert pq.read_table(paths["preference"]).schema.names[:5] == ["problem_id", "source", "prompt", "chosen", "rejected"]
    from treesearch.harvest import features, load_table

    for name in ("sft", "prm", "preference"):  # datasets.load_dataset refuses empty files; load_table does not
        table = load_table(tmp_path / "out", name)
        assert len(table) == 0 and table.features == features()[name]


def test_harvest_skips_error_rows_and_rejects_bad_folders(tmp_path):
    run = tmp_path / "run"
    write_run(run, [fig_tree("fig")])
    folder = RunFolder(run)
    folder.write_error("fig", "boom")
    paths = harvest([run], tmp_path / "out")
    record = json.loads(paths["manifest"].read_text())
    assert record["counts"]["trees"] == 0 and record["runs"][0]["skipped"]["errors"] == 1
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        harvest([tmp_path], tmp_path / "out2")
    with pytest.raises(ValueError, match="values must be one of"):
        harvest([run], tmp_path / "out2", values="both")


def test_harvest_renders_missing_prompts_with_the_runs_task(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "fig", "input": "What is 2 + 3?", "target": 5}) + "\n")
    run = tmp_path / "run"
    t = fig_tree("fig")
    t.prompt = ""  # a tree saved without its prompt: the task renders it from its data
    write_run(run, [t])
    (run / "config.yaml").write_text(
        f"task:\n  name: jsonl\n  path: {data}\n  question_field: input\n  answer_field: target\n  id_field: id\n"
    )
    import pyarrow.parquet as pq

    paths = harvest([run], tmp_path / "out")
    prompt = pq.read_table(paths["sft"]).to_pylist()[0]["prompt"]
    assert prompt[-1] == {"role": "user", "content": "What is 2 + 3?"} and prompt[0]["role"] == "system"
    with pytest.raises(ValueError, match="given twice"):
        harvest([run, run], tmp_path / "out")


def test_harvest_cli(two_runs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert harvest_main([*map(str, two_runs), str(out), "--values", "mc", "--top-k", "1", "--margin", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert "sft.parquet" in printed and "prm.parquet" in printed
    record = json.loads((out / "harvest.json").read_text())
    assert record["parameters"] == {"top_k": 1, "values": "mc", "margin": 0.3, "min_visits": 0, "labels": "gold",
                                    "reject_lucky": "arithmetic", "prompts": "searched"}
    assert record["counts"]["sft"] == 2  # one per problem
    assert harvest_main([str(two_runs[0])]) == 2  # OUT missing: usage error
    assert harvest_main([str(tmp_path / "nope"), str(out)]) == 1
    assert "run folder not found" in capsys.readouterr().err


def test_without_demonstrations_keeps_the_instruction_and_the_question():
    shots = [{"role": "system", "content": "Solve."}, {"role": "user", "content": "1 + 1?"},
             {"role": "assistant", "content": "1 + 1 = 2\nThe answer is 2."}, {"role": "user", "content": "2 + 5?"}]
    assert without_demonstrations(shots) == [shots[0], shots[-1]]
    assert without_demonstrations(shots[1:]) == [shots[-1]]  # no system message
    assert without_demonstrations(PROMPT) == PROMPT and without_demonstrations("plain text") == "plain text"
    with pytest.raises(ValueError, match="last message is 'assistant'"):
        without_demonstrations(shots[:3])


def test_zero_shot_rows_drop_the_worked_examples_the_search_saw(tmp_path):
    import pyarrow.parquet as pq

    example = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "1 + 1 = 2"}]
    few_shot = [PROMPT[0], *example, PROMPT[1]]
    tree = sft_tree("p", RUN1_BRANCHES)
    tree.prompt = few_shot
    write_run(tmp_path / "run", [tree])
    searched = harvest([tmp_path / "run"], tmp_path / "searched")
    zero = harvest([tmp_path / "run"], tmp_path / "zero", prompts="zero_shot")
    for name in ("sft", "prm"):
        assert len(pq.read_table(zero[name])) == len(pq.read_table(searched[name])) > 0
    assert pq.read_table(searched["sft"]).to_pylist()[0]["prompt"] == few_shot
    sft = pq.read_table(zero["sft"]).to_pylist()
    assert all(r["prompt"] == PROMPT and r["messages"][:2] == PROMPT for r in sft)
    prm = pq.read_table(zero["prm"]).to_pylist()
    assert all(r["prompt"] == "Solve step by step.\n\nWhat is 2 + 3?" for r in prm)
    assert json.loads((tmp_path / "zero" / "harvest.json").read_text())["parameters"]["prompts"] == "zero_shot"
    with pytest.raises(ValueError, match="prompts must be one of"):
        harvest([tmp_path / "run"], tmp_path / "bad", prompts="few")


# --------------------------------------------------------------- from a real search
QUICK, CAREFUL = "Quick guess.\n", "Careful: 3 groups of 3.\n"
MUL, ADD = "3 * 3 = 9.\n", "3 + 3 = 6.\n"
SCRIPT = {
    (): [(QUICK, -0.05), (CAREFUL, -12.0)],
    (QUICK,): [("The answer is 5.", -0.1), ("The answer is 6.", -2.5)],
    (CAREFUL,): [(ADD, -0.3), (MUL, -1.5)],
    (CAREFUL, MUL): [("The answer is 9.", -0.1)],
    (CAREFUL, ADD): [("The answer is 6.", -0.1)],
}


def critic(state):
    if state.terminal:
        return 0.95 if state.answer == "9" else 0.1
    return 0.9 if MUL in state.solution else 0.8 if CAREFUL in state.solution else 0.3


def test_harvest_of_a_scripted_mcts_search(tmp_path):
    problems = [Problem("groups", "There are 3 groups of 3 apples. How many apples?", gold="9")]
    results = treesearch.search(
        problems, policy=ScriptedPolicy(SCRIPT), critic=critic, algorithm="mcts",
        budget=Budget(simulations=12), root_expansions=2, expansions=2,
    )
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.claim([p.id for p in problems], "digest")
    (run.path / "config.yaml").write_text("task:\n  name: numeric\n")
    for result in results:
        run.write_result(result)
    tree = results[0].tree
    assert (tree.reward[tree.terminal_nodes()] == 1).any()

    paths = harvest([run.path], tmp_path / "out", margin=0.1)
    import pyarrow.parquet as pq

    sft = pq.read_table(paths["sft"]).to_pylist()
    assert sft and all(r["completion"][0]["content"].endswith("The answer is 9.") for r in sft)
    assert sft[0]["prompt"][-1]["content"] == problems[0].question
    prm = pq.read_table(paths["prm"]).to_pylist()
    assert prm and all(0 <= x <= 1 for r in prm for x in r["labels"])
    assert any(r["labels"][-1] == 1.0 for r in prm) and any(r["labels"][-1] == 0.0 for r in prm)
    pairs = pq.read_table(paths["preference"]).to_pylist()
    assert any(p["chosen_step"] == MUL and p["rejected_step"] == ADD for p in pairs)
    assert all(p["chosen_value"] - p["rejected_value"] >= 0.1 - 1e-9 for p in pairs)


# ---------------------------------------------------------------------------- TRL
def _train_one_step(trainer) -> None:
    out = trainer.train()
    assert out.global_step == 1 and math.isfinite(out.training_loss)


def test_trl_sft_trainer_takes_the_sft_rows(two_runs, tmp_path, tiny_model_dir):
    trl = pytest.importorskip("trl")
    import datasets
    from transformers import AutoTokenizer

    paths = harvest(two_runs, tmp_path / "out")
    data = datasets.load_dataset("parquet", data_files=str(paths["sft"]), split="train")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.chat_template
    config = dict(
        max_steps=1, per_device_train_batch_size=2, report_to="none", use_cpu=True, bf16=False,
        gradient_checkpointing=False, save_strategy="no", logging_steps=1, dataset_num_proc=None,
    )
    # the table as written: TRL's prompt-completion path (completion-only loss)
    trainer = trl.SFTTrainer(
        model=str(tiny_model_dir), processing_class=tokenizer, train_dataset=data,
        args=trl.SFTConfig(output_dir=str(tmp_path / "sft"), **config),
    )
    row = trainer.train_dataset[0]
    prompt_len = row["labels"].count(-100)
    assert 0 < prompt_len < len(row["input_ids"])  # the prompt is masked, the completion is not
    _train_one_step(trainer)
    # `messages` alone: whole-conversation language modelling
    trainer = trl.SFTTrainer(
        model=str(tiny_model_dir), processing_class=tokenizer, train_dataset=data.select_columns(["messages"]),
        args=trl.SFTConfig(output_dir=str(tmp_path / "sft2"), **config),
    )
    _train_one_step(trainer)


def test_trl_dpo_trainer_takes_the_preference_rows(two_runs, tmp_path, tiny_model_dir):
    trl = pytest.importorskip("trl")
    import datasets
    from transformers import AutoTokenizer

    paths = harvest(two_runs, tmp_path / "out")
    data = datasets.load_dataset("parquet", data_files=str(paths["preference"]), split="train")
    assert len(data) >= 2
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = trl.DPOTrainer(
        model=str(tiny_model_dir), processing_class=tokenizer, train_dataset=data,
        args=trl.DPOConfig(
            output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to="none",
            use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no", logging_steps=1,
        ),
    )
    row = trainer.train_dataset[0]
    # the prompt is the task's chat prompt; the completions start with the shared prefix
    assert tokenizer.decode(row["prompt_ids"]).rstrip().endswith("assistant")
    assert tokenizer.decode(row["chosen_ids"]).startswith(data[0]["prefix"])
    batch = trl.trainer.dpo_trainer.DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(
        [trainer.train_dataset[i] for i in range(2)]
    )
    assert batch["input_ids"].shape[0] == 4
    _train_one_step(trainer)


def test_prm_rows_stop_at_an_empty_step():
    # root -> "a\n" -> "" (the model ended with no text, no answer) ; "a\n" -> "The answer is 1."
    tree = Tree()
    (a,) = tree.add_children(0, ["a\n"])
    empty, right = tree.add_children(int(a), ["", "The answer is 1."], terminal=[True, True], answers=[None, "1"],
                                     finish_reasons=["eos", "eos"])
    tree.reward[[empty, right]] = [0.0, 1.0]
    rows = prm_rows(tree, inferred_values(tree))
    assert all(step.strip() for row in rows for step in row["completions"])
    assert [row["completions"] for row in rows] == [["a\n", "The answer is 1."]]


# ------------------------------------------------------------------ label-free rounds
def majority_wrong_tree(problem_id: str = "wrong") -> Tree:
    """Three samples answer 6 (one node with two duplicates), one answers 5 (the gold)."""
    t = Tree(problem_id, PROMPT)
    t.add_children(0, ["Guess: answer 6", "Add: answer 5", "Maybe: answer 6.0"], terminal=[True] * 3,
                   answers=["6", "5", "6.0"], duplicates=[1, 0, 0])
    for node in (1, 2, 3):
        t.close(node)
    return t


def test_the_vote_label_is_the_sample_weighted_majority_and_grades_the_terminals():
    from treesearch.pseudo_labels import apply_label, vote_label
    from treesearch.tasks import Task

    task = Task()
    fig = fig_tree()
    assert vote_label(fig, task) == "5"  # node 5 stands for 3 samples, node 10 for 1
    apply_label(fig, task, "5")
    assert [fig.reward[n] for n in (4, 5, 6, 10, 11)] == [0.0, 1.0, 0.0, 1.0, 0.0]
    wrong = majority_wrong_tree()
    assert vote_label(wrong, task) == "6"  # "6" x2 and "6.0" vote together: 3 against 1
    apply_label(wrong, task, None)
    assert np.isnan(wrong.reward[[1, 2, 3]]).all()
    assert vote_label(Tree("empty", PROMPT), task) is None


def test_a_label_free_harvest_trains_on_the_majority_and_reports_pseudo_label_accuracy(tmp_path):
    run = tmp_path / "run"
    write_run(run, [fig_tree("fig"), majority_wrong_tree("wrong")])  # both problems' gold is 5
    paths = harvest([run], tmp_path / "out", labels="vote")
    record = json.loads(paths["manifest"].read_text())
    assert record["parameters"]["labels"] == "vote"
    assert record["counts"]["pseudo_labels_checked"] == 2 and record["counts"]["pseudo_label_accuracy"] == 0.5
    import pyarrow.parquet as pq

    sft = pq.read_table(paths["sft"]).to_pylist()
    wrong = [r["completion"][0]["content"] for r in sft if r["problem_id"] == "wrong"]
    assert sorted(wrong) == ["Guess: answer 6", "Maybe: answer 6.0"]  # the majority's traces, not the gold's
    with pytest.raises(ValueError, match="labels must be one of"):
        harvest([run], tmp_path / "out2", labels="oracle")


def test_the_self_verified_label_weighs_each_answer_by_the_critics_belief_in_it(tmp_path):
    from treesearch.pseudo_labels import pseudo_label, verified_label, vote_label
    from treesearch.tasks import Task

    task = Task()
    tree = majority_wrong_tree()
    tree.critic_value[[1, 2, 3]] = [0.2, 0.9, 0.1]  # "6": 2 x 0.2 + 1 x 0.1 = 0.5; "5": 1 x 0.9
    assert vote_label(tree, task) == "6" and verified_label(tree, task) == "5"
    tree.critic_value[2] = np.nan  # no opinion: 0.5, a tie with "6", which was reached first
    assert verified_label(tree, task) == "6"
    tree.critic_value[2] = 0.51
    assert pseudo_label(tree, task, "self_verify") == "5" and pseudo_label(tree, task, "vote") == "6"
    with pytest.raises(ValueError, match="label-free sources: vote, self_verify"):
        pseudo_label(tree, task, "gold")

    run = tmp_path / "run"
    believed = majority_wrong_tree("wrong")
    believed.critic_value[[1, 2, 3]] = [0.2, 0.9, 0.1]
    write_run(run, [fig_tree("fig"), believed])  # both problems' gold is 5
    record = json.loads(harvest([run], tmp_path / "out", labels="self_verify")["manifest"].read_text())
    assert record["counts"]["pseudo_label_accuracy"] == 1.0  # the plain vote got 0.5 on these two

    # a search whose critic read the gold answers would leak them into label-free labels
    config = run / "config.yaml"
    config.write_text(config.read_text() + "critic:\n  name: verifier\n")
    for labels in ("vote", "self_verify"):
        with pytest.raises(ValueError, match=rf"labels={labels} is for data without gold answers, but critic=verifier"):
            harvest([run], tmp_path / f"leak-{labels}", labels=labels)
    assert harvest([run], tmp_path / "gold")["prm"].exists()  # gold labels from a verifier search are fine


def test_target_ranking_shows_inferred_targets_ranking_by_depth_across_the_tree():
    """The issue's 4-step chain: right steps get 0.25 / 0.5 / 0.75 / 1.0 (inferred), a
    wrong step at depth 4 gets 0.625, above the right steps at depths 1 and 2."""
    from treesearch.value_targets import TargetRanking, inferred_values, step_outcomes

    t = Tree("chain", PROMPT)
    t.add_children(0, ["r1\n"])
    t.add_children(1, ["r2\n"])
    t.add_children(2, ["r3\n"])
    t.add_children(3, ["r4: answer 5", "w4: answer 4"], terminal=[True, True], answers=["5", "4"])
    t.close(4)
    t.close(5)
    t.reward[4], t.reward[5] = 1.0, 0.0
    assert inferred_values(t)[1:].tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.625])
    assert step_outcomes(t)[1:].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    inferred, mc = TargetRanking("inferred"), TargetRanking("mc")
    inferred.add(t)
    mc.add(t)
    assert inferred.as_dict() == {"sibling_pairs": 1, "sibling_accuracy": 1.0, "any_depth_pairs": 4,
                                  "any_depth_accuracy": 0.5}
    assert mc.as_dict()["any_depth_accuracy"] == 1.0


def test_critic_values_are_the_searchs_own_values_with_no_gold_in_them(tmp_path):
    """Self-Judge: PRM rows whose targets are the critic's values (a self-eval search's
    judgements), and the harvest's ranking of them against the gold outcomes."""
    import pyarrow.parquet as pq

    from treesearch.value_targets import critic_values

    t = fig_tree("judged")
    t.critic_value[[1, 2, 5, 6, 7, 10]] = [0.8, 0.3, 1.2, 0.1, 0.6, 0.9]  # 1.2: clipped to 1
    values = critic_values(t)
    assert math.isnan(values[0]) and values[[1, 2, 5, 6, 7, 10]].tolist() == pytest.approx([0.8, 0.3, 1.0, 0.1, 0.6, 0.9])
    assert math.isnan(values[3])  # never scored
    t.reward[:] = np.where(t.terminal, 0.0, t.reward)  # the gold outcomes do not move critic targets
    assert np.array_equal(critic_values(t), values, equal_nan=True)
    tree = fig_tree("judged")
    tree.critic_value[[1, 2, 5, 6, 7, 10]] = [0.8, 0.3, 1.2, 0.1, 0.6, 0.9]
    write_run(tmp_path / "run2", [tree])
    paths = harvest([tmp_path / "run2"], tmp_path / "out", values="critic")
    rows = pq.read_table(paths["prm"]).to_pylist()
    assert rows and {r["source"] for r in rows} == {"critic"}
    by_path = {tuple(r["completions"]): r["labels"] for r in rows}
    assert by_path[("A\n", "A1: answer 5")] == pytest.approx([0.8, 1.0])
    ranking = json.loads(paths["manifest"].read_text())["target_ranking"]["critic"]
    assert ranking["sibling_pairs"] > 0 and 0 <= ranking["sibling_accuracy"] <= 1


def test_the_tree_page_shows_node_ids_the_chosen_path_first_and_steps_that_start_with_a_newline():
    from treesearch.viewer import chosen_path, render_tree

    t = Tree("v", "What is 2 + 3?")
    t.add_children(0, ["often visited\n", "\nchosen step\n"])
    t.add_children(2, ["The answer is 5."], terminal=[True], answers=["5"])
    t.visits[[1, 2]] = [9, 1]
    chosen = chosen_path(t, "\nchosen step\nThe answer is 5.")
    assert chosen == {0, 2, 3}
    page = render_tree(t, chosen, "Problem v", "meta")
    assert page.index("#2</span>") < page.index("#1</span>"), "the chosen child comes first"
    assert "⏎chosen step" in page and "#3</span>" in page
