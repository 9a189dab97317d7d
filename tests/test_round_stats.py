"""Self-training figures: standard errors, paired differences, the plot, and the split
configs (extra train and dev splits) — no models."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from treesearch.round_stats import add_comparisons, paired_difference, plot_rounds, standard_error
from treesearch.runfolder import RunFolder


def graded_run(folder, correct: dict):
    folder.mkdir(parents=True)
    rows = [{"id": p, "correct": c} for p, c in correct.items()]
    pq.write_table(pa.Table.from_pylist(rows), folder / RunFolder.TABLE)
    return folder


def test_standard_error_by_hand():
    assert standard_error(5, 50) == pytest.approx(math.sqrt(0.1 * 0.9 / 50))
    assert standard_error(0, 10) == 0.0 and math.isnan(standard_error(0, 0))


def test_paired_difference_over_the_problems_both_graded(tmp_path):
    new = graded_run(tmp_path / "new", {"a": False, "b": True, "c": True, "d": False, "e": True})
    old = graded_run(tmp_path / "old", {"a": False, "b": False, "c": False, "d": True, "e": None})
    diff = paired_difference(new, old)
    # e is ungraded in the old run: 4 problems, differences 0, 1, 1, -1
    assert diff["problems"] == 4 and diff["difference"] == pytest.approx(0.25)
    variance = ((0 - 0.25) ** 2 + 2 * (1 - 0.25) ** 2 + (-1 - 0.25) ** 2) / 3
    assert diff["se"] == pytest.approx(math.sqrt(variance / 4))
    assert diff["ci95"] == pytest.approx([0.25 - 1.96 * diff["se"], 0.25 + 1.96 * diff["se"]])
    assert (diff["only_new_right"], diff["only_old_right"]) == (2, 1)
    assert paired_difference(new, graded_run(tmp_path / "other", {"z": True})) == {"problems": 0}
    one = paired_difference(new, graded_run(tmp_path / "one", {"b": False}))  # no spread from one problem
    assert one["difference"] == 1 and one["se"] is None and one["ci95"] is None
    json.dumps(one, allow_nan=False)  # round.json stays strict JSON


def test_comparisons_match_splits_and_evaluations(tmp_path):
    runs = {name: graded_run(tmp_path / name, correct) for name, correct in {
        "base": {"a": False, "b": False}, "base_x": {"a": True, "b": False},
        "r0": {"a": True, "b": False}, "r0_x": {"a": True, "b": True}, "r0_search": {"a": True, "b": True},
        "r1": {"a": True, "b": True}, "r1_x": {"a": False, "b": True},
    }.items()}
    baseline = {"dev_greedy": {"run": str(runs["base"])}, "extra_dev": {"x": {"dev_greedy": {"run": str(runs["base_x"])}}}}
    r0 = {"dev_greedy": {"run": str(runs["r0"])}, "dev_search": {"run": str(runs["r0_search"])},
          "extra_dev": {"x": {"dev_greedy": {"run": str(runs["r0_x"])}}}}
    add_comparisons(r0, "dev", baseline, None)
    assert r0["dev_greedy"]["vs_baseline"]["difference"] == pytest.approx(0.5)
    assert r0["extra_dev"]["x"]["dev_greedy"]["vs_baseline"]["difference"] == pytest.approx(0.5)
    assert "vs_baseline" not in r0["dev_search"] and "vs_previous" not in r0["dev_greedy"]
    r1 = {"dev_greedy": {"run": str(runs["r1"])}, "extra_dev": {"x": {"dev_greedy": {"run": str(runs["r1_x"])}}}}
    add_comparisons(r1, "dev", baseline, r0)
    assert r1["dev_greedy"]["vs_previous"]["difference"] == pytest.approx(0.5)
    assert r1["extra_dev"]["x"]["dev_greedy"]["vs_previous"]["difference"] == pytest.approx(-0.5)
    assert r1["extra_dev"]["x"]["dev_greedy"]["vs_baseline"]["difference"] == pytest.approx(0.0)


def test_plot_rounds_writes_a_png(tmp_path):
    summary = {
        "baseline": {"dev_greedy": {"accuracy": 0.1, "correct": 5, "graded": 50}},
        "rounds": [{"round": 0, "dev_greedy": {"accuracy": 0.2, "se": 0.05}, "dev_search": {"accuracy": 0.3, "se": 0.06},
                    "extra_dev": {"multiarith": {"dev_greedy": {"accuracy": 0.25, "se": 0.03}}}}],
    }
    path = tmp_path / "plot" / "accuracy_by_round.png"
    assert plot_rounds(summary, "singleop", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------- split configs
def trainer(tmp_path, *overrides):
    from treesearch.config import compose
    from treesearch.selftrain import SelfTraining

    return SelfTraining(compose("selftrain", [f"task.path={tmp_path / 'singleop.jsonl'}",
                                              f"selftrain.dev.path={tmp_path / 'dev.jsonl'}", *overrides]))


def test_extra_splits_go_over_the_train_task_or_another_tasks_defaults(tmp_path):
    t = trainer(tmp_path, "task.offset=5",
                f"selftrain.extra_train=[{{path: {tmp_path / 'multiarith.jsonl'}, limit: 30}}, "
                f"{{task: gsm8k, split: train, limit: 20, label: gsm8k-train}}]",
                f"selftrain.extra_dev=[{{path: {tmp_path / 'multiarith.jsonl'}, offset: 300, limit: 200}}]")
    train = t.extra_splits("extra_train")
    assert list(train) == ["multiarith", "gsm8k-train"]
    assert train["multiarith"]["name"] == "jsonl" and train["multiarith"]["offset"] == 0  # not the train offset
    assert train["multiarith"]["limit"] == 30 and train["multiarith"]["question_field"] == "input"
    assert train["gsm8k-train"]["name"] == "gsm8k" and "question_field" not in train["gsm8k-train"]
    assert train["gsm8k-train"]["split"] == "train" and train["gsm8k-train"]["path"] is None
    (dev,) = t.extra_splits("extra_dev").values()
    assert (dev["offset"], dev["limit"]) == (300, 200)
    assert t.primary_label("dev") == "dev" and t.primary_label("task") == "singleop"


def test_extra_splits_refuse_clashing_labels_and_unknown_tasks(tmp_path):
    same = trainer(tmp_path, f"selftrain.extra_train=[{{path: {tmp_path / 'other' / 'singleop.jsonl'}}}]")
    with pytest.raises(ValueError, match=r"extra_train\[0\]: the label 'singleop' is taken"):
        same.extra_splits("extra_train")
    bad = trainer(tmp_path, "selftrain.extra_dev=[{task: nope, limit: 3}]")
    with pytest.raises(ValueError, match="task must be one of"):
        bad.extra_splits("extra_dev")
    odd = trainer(tmp_path, "selftrain.extra_dev=[{path: x.jsonl, label: 'a b'}]")
    with pytest.raises(ValueError, match="give it a label"):
        odd.extra_splits("extra_dev")


def test_extra_splits_change_the_digest_only_when_given(tmp_path):
    from treesearch.selftrain import selftrain_digest

    plain_digest = selftrain_digest(trainer(tmp_path).cfg)
    assert selftrain_digest(trainer(tmp_path, "selftrain.extra_dev=[]").cfg) == plain_digest
    assert selftrain_digest(trainer(tmp_path, "selftrain.eval.search_limit=null").cfg) == plain_digest
    assert selftrain_digest(trainer(tmp_path, "selftrain.extra_dev=[{path: a.jsonl}]").cfg) != plain_digest
    assert selftrain_digest(trainer(tmp_path, "selftrain.eval.search_limit=50").cfg) != plain_digest


def test_a_warm_started_prm_trains_on_from_the_rounds_prm(tmp_path):
    from treesearch.components import plain
    from treesearch.selftrain import prm_base_model, selftrain_digest

    cold, warm = (plain(trainer(tmp_path, *o).st["prm_training"]) for o in
                  ((), ("selftrain.prm_training.warm_start=true",)))
    assert cold["base_model"] == "smollm2" and prm_base_model(cold, "round-0/prm", "round-0/policy") == "smollm2"
    assert prm_base_model(warm, "round-0/prm", "round-0/policy") == "round-0/prm"
    assert prm_base_model(warm, None, "smollm2") == "smollm2"  # round 0 without initial_prm
    assert prm_base_model({**warm, "base_model": None}, None, "round-0/policy") == "round-0/policy"
    plain_digest = selftrain_digest(trainer(tmp_path).cfg)
    assert selftrain_digest(trainer(tmp_path, "selftrain.prm_training.warm_start=false").cfg) == plain_digest
    assert selftrain_digest(trainer(tmp_path, "selftrain.prm_training.warm_start=true").cfg) != plain_digest


def test_a_round_searches_with_the_budget_b_star_chose(tmp_path):
    from treesearch.components import plain

    t = trainer(tmp_path, "search.budget.generated_tokens=256", "search.budget.simulations=null")
    seen = []

    class Stop(Exception):
        pass

    def capture(cfg):
        seen.append(plain(cfg["search"]))
        raise Stop

    t._run_job = capture
    with pytest.raises(Stop):
        t._round(tmp_path / "round-1", 1, "policy", None, 1.0, 0.5, None, None, None)
    assert seen[0]["budget"]["generated_tokens"] == 128 and seen[0]["budget"]["simulations"] is None
    assert seen[0]["options"]["temperature"] == 1.0


def test_a_bad_train_search_is_refused_before_the_baseline_runs(tmp_path):
    t = trainer(tmp_path, "search=self_consistency", "search.budget.generated_tokens=null",
                f"selftrain.output_dir={tmp_path / 'st'}")
    t._run_job = lambda cfg: pytest.fail("a job ran")
    with pytest.raises(ValueError, match="Budget is unbounded"):
        t.run()


@pytest.mark.parametrize(("override", "message"), [
    ("selftrain.bstar.sample_counts=[4,16]", r"selftrain.bstar .*sample counts \[16\] exceed the 8 samples"),
    ("selftrain.bstar.count_tolerance=0", "tolerance must be in"),
])
def test_bad_b_star_sample_counts_are_refused_before_the_baseline_runs(tmp_path, override, message):
    extra = () if "sample_counts" in override else ("selftrain.bstar.sample_counts=[2,4]",)
    t = trainer(tmp_path, override, *extra, f"selftrain.output_dir={tmp_path / 'st'}")
    t._run_job = lambda cfg: pytest.fail("a job ran")
    with pytest.raises(ValueError, match=message):
        t.run()
