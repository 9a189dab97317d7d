"""Every benchmark script runs end to end at its `--quick` size (smoke tests; the numbers
themselves live in BENCHMARKS.md, measured at the default sizes)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tree_core_quick(tmp_path):
    report = load("tree_core").main(["--quick", "--out", str(tmp_path / "tree.json")])
    assert json.loads((tmp_path / "tree.json").read_text()) == report
    assert report["store_sims_per_s"] > 0 and report["objects_sims_per_s"] > 0
    # both trees grew from the same simulations: similar sizes, and the store is the smaller per node
    assert report["store_nodes"] > 1000 and report["objects_nodes"] > 1000
    assert report["store_bytes_per_node"] < report["objects_bytes_per_node"]


def test_budget_quick_with_a_tiny_model(tmp_path, tiny_model_dir):
    data = tmp_path / "mawps.jsonl"
    data.write_text("".join(json.dumps({"input": f"Tom has {i} apples and buys 2. How many?", "target": i + 2}) + "\n"
                            for i in range(6)))
    report = load("budget").main(["--quick", "--data", str(data), "--model", str(tiny_model_dir),
                                  "--out", str(tmp_path / "budget.json")])
    assert report["problems"] == 4
    points = report["points"]
    # greedy once; four searches at two budgets, one seed; MCTS*'s trees also by vote
    assert sorted((p["algorithm"], p["budget"]) for p in points) == sorted(
        [("greedy", 128)] + [(a, b) for a in ("self_consistency", "best_of_n", "beam", "mcts", "mcts_vote")
                             for b in (64, 128)])
    by_name = {(p["algorithm"], p["budget"]): p for p in points}
    for b in (64, 128):  # the vote re-reads the same trees: same tokens, same critic calls
        assert by_name[("mcts_vote", b)]["mean_generated_tokens"] == by_name[("mcts", b)]["mean_generated_tokens"]
        assert by_name[("mcts_vote", b)]["mean_critic_calls"] == by_name[("mcts", b)]["mean_critic_calls"]
    for p in points:
        assert len(p["correct"]) == 4 and 0 <= p["accuracy"] <= 1
        # every search overruns by less than one request: a solution (max_solution_tokens
        # 512) for the samplers and greedy, a step (max_step_tokens 128) for the step searches
        one_request = 128 if p["algorithm"] in ("beam", "mcts", "mcts_vote") else 512
        assert p["mean_generated_tokens"] < p["budget"] + one_request
    assert {(c["search"], c["baseline"], c["budget"]) for c in report["paired"]} == {
        (s, o, b) for s in ("mcts", "mcts_vote") for o in ("best_of_n", "beam", "self_consistency") for b in (64, 128)}
    for c in report["paired"]:  # a difference of paired 0/1 outcomes
        assert c["pairs"] == 4 and c["difference"] == pytest.approx(
            (c["search_only_correct"] - c["baseline_only_correct"]) / 4)
    assert (tmp_path / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["self_consistency"] == "majority vote over best-of-N's samples"

    # self-consistency scored on best-of-N's samples answers as its own run would
    alone = load("budget").main(["--quick", "--data", str(data), "--model", str(tiny_model_dir),
                                 "--algorithms", "self_consistency", "--out", str(tmp_path / "sc.json")])
    assert alone["self_consistency"] == "own run"
    derived = {p["budget"]: p for p in points if p["algorithm"] == "self_consistency"}
    for p in alone["points"]:
        assert p["correct"] == derived[p["budget"]]["correct"]
        assert p["answered"] == derived[p["budget"]]["answered"]
        assert p["mean_generated_tokens"] == derived[p["budget"]]["mean_generated_tokens"]


def test_budget_names_a_missing_data_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load("budget").main(["--data", str(tmp_path / "missing.jsonl")])
    assert "missing.jsonl: no such file" in capsys.readouterr().err


def test_budget_offset_takes_a_later_slice(tmp_path, capsys):
    data = tmp_path / "mawps.jsonl"
    data.write_text("".join(json.dumps({"input": f"q{i}", "target": i}) + "\n" for i in range(6)))
    _, problems = load("budget").load_problems(str(data), limit=3, offset=2)
    assert [p.gold for p in problems] == ["2", "3", "4"]
    with pytest.raises(SystemExit):
        load("budget").main(["--data", str(data), "--offset", "6"])
    assert "--offset 6" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load("budget").main(["--data", str(data), "--offset", "-1"])
    assert "task.offset must be an integer >= 0" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_cluster")
def test_scaling_quick_runs_real_jobs_on_simulated_engines(tmp_path):
    report = load("scaling").main(["--quick", "--out", str(tmp_path / "scaling.json")])
    rows = report["rows"]
    assert [r["actors"] for r in rows] == [1, 2]
    assert [r["problems"] for r in rows] == [8, 16]  # weak scaling: work grows with the actors
    assert rows[0]["efficiency"] == 1.0 and rows[1]["efficiency"] > 0
    assert all(r["generated_tokens_per_s"] > 0 for r in rows)


def test_throughput_quick_with_a_tiny_model(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TREESEARCH_CACHE", str(tmp_path / "cache"))  # the converted IR goes here
    report = load("throughput").main(["--quick", "--model", str(tiny_model_dir), "--threads", "1",
                                      "--out", str(tmp_path / "throughput.json")])
    assert [r["batch"] for r in report["generation"]] == [1, 8]
    for row in report["generation"]:
        assert row["openvino_fp32_tok_s"] > 0 and row["hf_policy_tok_s"] > 0 and row["plain_generate_tok_s"] > 0
    tree = {r["engine"]: r for r in report["tree"]}
    cached, uncached = tree["openvino_fp32"], tree["openvino_fp32_no_prefix_cache"]
    assert cached["prompt_tokens_naive"] == uncached["prompt_tokens_naive"] == uncached["prompt_tokens_encoded"]
    assert cached["prompt_tokens_encoded"] < uncached["prompt_tokens_encoded"]
    assert {r["engine"] for r in report["mcts"]} == {"openvino_fp32", "hf_policy"}
    for r in report["mcts"]:
        assert r["tok_s"] > 0
        # transformers gets requests gathered across trees; OpenVINO batches continuously, a call per request
        assert r["mean_policy_batch"] > 1 if r["engine"] == "hf_policy" else r["mean_policy_batch"] == 1
    assert "job" not in report
    assert all(r["ratio"] > 1 for r in report["prefix"])  # KV reuse encodes fewer prompt tokens
    assert report["batching"]["rows"][1]["mean_policy_batch"] > report["batching"]["rows"][0]["mean_policy_batch"]
    overhead = report["overhead"]
    assert overhead["nodes"] > 8 and 0 <= overhead["engine_share"] < 1


def test_gpu_check_reports_every_check_and_goes_on_after_a_failure(tmp_path, capsys):
    """The GPU check's table (its checks themselves need a CUDA GPU: BENCHMARKS.md says
    where it ran); here its bookkeeping, and the job it would run composed on the CPU."""
    import torch

    from treesearch.config import compose
    from treesearch.hosting import critic_shares_policy

    gpu_check = load("gpu_check")

    def broken(ctx):
        raise RuntimeError("no engine\nsecond line")

    rows = gpu_check.run_checks({"have": True}, [("first", lambda ctx: "fine", ""), ("second", broken, ""),
                                                  ("third", lambda ctx: "ran", "have"), ("fourth", broken, "absent")])
    assert [(r["check"], r["status"]) for r in rows] == [("first", "pass"), ("second", "fail"), ("third", "pass"),
                                                         ("fourth", "skip")]
    assert rows[1]["detail"] == "RuntimeError: no engine" and rows[3]["detail"] == "needs absent"
    job = compose("search", gpu_check._job_overrides({"model": "smollm2"}, tmp_path / "job"))
    assert job.cluster.policy.num_gpus == 1 and critic_shares_policy(job)
    if not torch.cuda.is_available():
        assert gpu_check.main(["--out", str(tmp_path / "gpu.json")]) == 2
        assert "no CUDA GPU here" in capsys.readouterr().err and not (tmp_path / "gpu.json").exists()


def test_prm_targets_bootstraps_the_paired_difference_over_trees():
    from treesearch.value_targets import TargetRanking

    def ranking(right_share, pairs):
        r = TargetRanking("mc")
        r.scores = {"sibling": right_share * pairs, "any_depth": right_share * pairs * 2}
        r.pairs = {"sibling": pairs, "any_depth": pairs * 2}
        return r

    better = [ranking(1.0, 10), ranking(0.8, 30), ranking(0.9, 20)]
    worse = [ranking(0.5, 10), ranking(0.5, 30), ranking(0.6, 20)]
    out = load("prm_targets").paired_bootstrap(better, worse, resamples=500)
    expected = ((10 + 24 + 18) - (5 + 15 + 12)) / 60
    for kind in ("sibling", "any_depth"):
        low, high = out[kind]["ci95"]
        assert out[kind]["difference"] == pytest.approx(expected) and 0 < low <= expected <= high
    prm_targets = load("prm_targets")
    assert set(prm_targets.differences({"mc": better, "inferred": worse})) == {"mc_minus_inferred"}
    many = prm_targets.differences({"mc": better, "inferred": worse, "hard": worse, "mixed": better})
    assert set(many) == {"inferred_minus_mc", "hard_minus_mc", "mixed_minus_mc"}
    assert many["hard_minus_mc"]["any_depth"]["difference"] == pytest.approx(-expected)
    assert many["mixed_minus_mc"]["any_depth"]["difference"] == pytest.approx(0.0)
    assert prm_targets.differences({"hard": worse, "inferred": better}) == {}


def test_prm_depth_figures_per_depth_pool_the_deep_ones():
    by_depth = load("prm_depth").by_depth
    depths = [1, 1, 2, 2, 3, 5, 5, 6]
    outcomes = [1, 0, 1, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.2, 0.8, 0.5, 0.3, 0.6, 0.7]
    out = by_depth(depths, outcomes, scores, max_depth=3)
    assert set(out["by_depth"]) == {"1", "2", "3"}
    assert out["by_depth"]["1"] == {"auc": 1.0, "steps": 2, "right": 1}
    assert out["by_depth"]["2"]["auc"] == 0.0
    assert out["by_depth"]["3"] == {"auc": 1.0, "steps": 4, "right": 3}  # 3, 5, 5, 6 pooled
    assert out["overall"]["steps"] == 8 and 0 < out["overall"]["auc"] < 1
    assert by_depth([1], [1], [0.5], 4)["by_depth"]["1"]["auc"] is None  # one class only


def test_prm_depth_scores_every_decided_step_of_a_run(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoTokenizer

    from critics.prm import ValueHeadModel
    from tests.test_harvest import fig_tree, write_run
    from treesearch.models import load_causal_lm
    from treesearch.value_targets import step_outcomes

    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu")
    torch.manual_seed(0)
    folder = ValueHeadModel(model).save_pretrained(tmp_path / "prm", tok)
    write_run(tmp_path / "run", [fig_tree("a"), fig_tree("b")])
    out = tmp_path / "depth.json"
    report = load("prm_depth").main([str(tmp_path / "run"), "--prm", f"tiny={folder}", "--self-eval",
                                      str(tiny_model_dir), "--out", str(out)])
    assert json.loads(out.read_text()) == report and report["trees"] == 2
    from treesearch.harvest import _Run

    run = _Run(tmp_path / "run")
    _, _, states = load("prm_depth").decided_steps(run, next(iter(run.trees())))
    assert {s.problem.question for s in states} == {"What is 2 + 3?"}  # a judge reads the real question
    judged = report["prms"]["self_eval"]  # the policy judging the same steps
    assert judged["overall"]["steps"] == report["prms"]["tiny"]["overall"]["steps"] and 0 <= judged["overall"]["auc"] <= 1
    figures = report["prms"]["tiny"]
    outcome = step_outcomes(fig_tree())
    decided = [i for i in range(1, len(outcome)) if outcome[i] == outcome[i]]
    assert figures["overall"]["steps"] == 2 * len(decided)
    assert figures["overall"]["right"] == 2 * sum(outcome[i] == 1 for i in decided)
    assert sum(f["steps"] for f in figures["by_depth"].values()) == 2 * len(decided)
    assert set(figures["by_depth"]) == {"1", "2", "3"}
    assert 0 <= figures["overall"]["auc"] <= 1 and figures["overall"]["sibling_pairs"] > 0
    with pytest.raises(SystemExit):
        load("prm_depth").main([str(tmp_path / "run"), "--prm", str(tmp_path / "nope"), "--out", str(out)])


def tiny_prm(tmp_path, tiny_model_dir, monkeypatch):
    """A value-head PRM with a random head on the tiny model, its OpenVINO IR cached under
    `tmp_path`."""
    import torch

    from critics.prm_model import ValueHeadModel
    from treesearch.models import load_causal_lm

    monkeypatch.setenv("TREESEARCH_CACHE", str(tmp_path / "cache"))
    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu")
    torch.manual_seed(0)
    return ValueHeadModel(model).save_pretrained(tmp_path / "prm", tok)


def test_engine_busy_quick_measures_every_arm_on_one_engine(tmp_path, tiny_model_dir, monkeypatch):
    prm = tiny_prm(tmp_path, tiny_model_dir, monkeypatch)
    out = tmp_path / "busy.json"
    report = load("engine_busy").main(["--quick", "--prm", str(prm), "--calls-in-flight", "auto,1", "--out", str(out)])
    assert json.loads(out.read_text()) == report and report["problems"] == 8 and report["trees_in_flight"] == 4
    arms = report["arms"]
    assert set(arms) == {"self_consistency", "mcts_free_critic", "mcts_prm", "self_consistency@calls=1",
                         "mcts_free_critic@calls=1"}
    for name, arm in arms.items():
        assert arm["tok_s"] > 0 and 0 < arm["engine_busy"] <= 1 and arm["mean_running"] >= 1
        assert arm["vs_self_consistency"] == pytest.approx(arm["tok_s"] / arms["self_consistency"]["tok_s"])
        if "@calls=1" not in name:  # the engine batches continuously: each request is a call of its own
            assert arm["mean_policy_batch"] == 1
    assert arms["mcts_prm"]["runs"][0]["critic_calls"] > 0 and arms["mcts_free_critic"]["runs"][0]["policy_calls"] > 0
    with pytest.raises(SystemExit):
        load("engine_busy").main(["--quick", "--arms", "mcts_prm"])  # no reference arm


def test_prm_engine_quick_compares_both_backends_on_the_same_states(tmp_path, tiny_model_dir, monkeypatch):
    folder = tiny_prm(tmp_path, tiny_model_dir, monkeypatch)
    out = tmp_path / "engine.json"
    report = load("prm_engine").main(["--quick", "--prm", str(folder), "--batch", "8", "--out", str(out)])
    assert json.loads(out.read_text()) == report and report["states"] == 32
    assert set(report["backends"]) == {"hf", "openvino"} and report["max_abs_difference"] < 1e-4
    assert report["speedup"] == pytest.approx(report["backends"]["openvino"]["states_per_second"]
                                              / report["backends"]["hf"]["states_per_second"])


def test_wilson_interval_holds_the_rate_at_the_edges():
    wilson = load("frontier").wilson
    for n in (1, 6, 50, 300):
        for k in (0, 1, n // 2, n - 1, n):
            low, high = wilson(k, n)
            assert 0 <= low <= k / n <= high <= 1
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(30, 300)  # 10%: the textbook interval is 7.1% to 14.0%
    assert low == pytest.approx(0.0709, abs=1e-3) and high == pytest.approx(0.1398, abs=1e-3)


def _metrics(correct, graded, tokens=30.0):
    return {"accuracy": correct / graded, "correct": correct, "graded": graded, "mean_generated_tokens": tokens}


def test_frontier_selftrain_stage_reports_each_round_of_a_selftrain_folder(tmp_path):
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "config.yaml").write_text("task:\n  name: arith\n  level: word2-50\n  split: train\n  shots: 3\n"
                                        "selftrain:\n  dev:\n    split: test\n    shots: 0\n")
    baseline = {"dev_greedy": _metrics(6, 300), "extra_dev": {"multiarith": {"dev_greedy": _metrics(7, 200)}}}
    rounds = [{"round": r, "dev_greedy": _metrics(30 * (r + 1), 300), "dev_search": _metrics(10 + r, 30),
               "extra_dev": {"multiarith": {"dev_greedy": _metrics(10 + r, 200), "dev_search": _metrics(3, 30)}},
               "search": _metrics(40, 160), "search_extra": {"word2-10": _metrics(50, 80)},
               "data_counts": {"sft": 100 + r}, "prm_training": {"eval_auc": 0.8},
               "seconds": {"search": 600, "policy_training": 300}, "bstar": {"balance": 0.1}}
              for r in range(2)]
    (folder / "summary.json").write_text(json.dumps({"baseline": baseline, "rounds": rounds}))
    out = tmp_path / "frontier.json"
    out.write_text(json.dumps({"levels": [{"level": "word2-50", "policy": "base"}]}))
    report = load("frontier").main(["--stages", "selftrain", "--selftrain-run", str(folder), "--out", str(out)])
    assert json.loads(out.read_text()) == report and report["levels"] == [{"level": "word2-50", "policy": "base"}]
    section = report["selftrain"]
    assert (section["level"], section["shots"], section["split"]) == ("word2-50", 0, "test")
    assert [r["round"] for r in section["rounds"]] == [0, 1, 2]
    base, first, last = section["rounds"]
    assert base["greedy"] == pytest.approx(0.02) and base["mcts"] is None and base["multiarith"] == pytest.approx(0.035)
    assert "data_counts" not in base
    assert last["greedy"] == pytest.approx(0.2) and last["mcts"] == pytest.approx(11 / 30)
    assert last["splits"]["multiarith"]["mcts"]["n"] == 30 and last["data_counts"] == {"sft": 101}
    low, high = first["splits"]["dev"]["greedy"]["ci95"]
    assert low < 0.1 < high and first["train_search"]["word2-10"]["rate"] == pytest.approx(50 / 80)
    assert first["minutes"] == 15.0 and first["prm_eval_auc"] == 0.8
    with pytest.raises(SystemExit):
        load("frontier").main(["--stages", "selftrain", "--out", str(out)])  # no folder given


@pytest.mark.slow
def test_frontier_budgets_are_multiples_of_greedy_tokens_rounded_up_to_8():
    budgets = load("frontier").token_budgets
    assert budgets("x1,x2,x4", 23.5) == [24, 48, 96]
    assert budgets("x2,100,x0.1", 23.5) == [8, 48, 100]  # plain numbers are tokens; at least 8


def test_frontier_quick_on_the_packaged_model(tmp_path):
    out = tmp_path / "frontier.json"
    report = load("frontier").main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    levels = {e["level"]: e for e in report["levels"]}
    assert set(levels) == {"bare1-10", "bare2-10"} and all(e["policy"] == "base" for e in levels.values())
    for e in levels.values():
        assert e["n"] == 6 and 0 <= e["greedy"]["rate"] <= 1
        # pass@8 counts a problem solved by any of the 8 samples, so it bounds their vote
        assert e["pass_at_8"]["rate"] >= e["maj_at_8"]["rate"]
        low, high = e["pass_at_8"]["ci95"]
        assert low <= e["pass_at_8"]["rate"] <= high
    searched = levels["bare2-10"]
    assert set(searched["curves"]) == {"greedy", "self_consistency", "best_of_n", "best_of_n_vote", "beam2", "mcts",
                                       "mcts_vote"}
    assert [r["budget"] for r in searched["mcts_vs_best"]] == [64, 128]
    points = searched["search"]["points"]
    for row in searched["mcts_vs_best"]:  # the difference of paired outcomes against the best baseline there
        mine = next(p for p in points if p["algorithm"] == "mcts" and p["budget"] == row["budget"])
        best = next(p for p in points if p["algorithm"] == row["best"]  # greedy's one point serves every budget
                    and (p["budget"] == row["budget"] or p["algorithm"] == "greedy"))
        assert row["diff"] == pytest.approx(mine["accuracy"] - best["accuracy"])
        assert best["accuracy"] == max(p["accuracy"] for p in points if p["algorithm"] == "greedy" or (
            p["budget"] == row["budget"] and p["algorithm"] in ("self_consistency", "best_of_n", "best_of_n_vote", "beam2")))
    for p in points:  # no answer selection beats a perfect one over the same trees
        if p["algorithm"] != "greedy":
            assert p["accuracy"] <= p["gold_in_tree"] <= 1
    assert (tmp_path / "frontier_base_bare2-10.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun of one level keeps the other's entry
    again = load("frontier").main(["--quick", "--out", str(out), "--stages", "calibrate", "--levels", "bare1-10"])
    assert {e["level"] for e in again["levels"]} == {"bare1-10", "bare2-10"}
    assert next(e for e in again["levels"] if e["level"] == "bare2-10")["curves"] == searched["curves"]


@pytest.mark.slow
def test_prefix_staging_quick_gives_the_same_greedy_solutions(tmp_path):
    report = load("prefix_staging").main(["--quick", "--out", str(tmp_path / "staging.json")])
    assert report["problems"] == 8 and len(report["runs"]) == 2
    assert report["same_greedy_solutions"]  # staging changes the order requests enter, not what they produce
    assert report["greedy_speedup"] > 0 and json.loads((tmp_path / "staging.json").read_text()) == report
