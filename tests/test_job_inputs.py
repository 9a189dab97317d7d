"""Bad input and bad config: clear errors before any model loads; skipped rows become error rows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from tests.test_jobs import compose, tiny_job
from treesearch.jobs import run_job
from treesearch.runfolder import RunFolder

GOOD = '{"input": "Tom has 2 apples and buys 3. How many?", "target": 5}\n'


def mawps_job(data: Path, out: Path, *extra):
    # a model path that does not exist: if anything tried to load a model first, the
    # error would be about the model, not the data
    return [
        "task=mawps",
        f"task.path={data}",
        "policy.model=/nonexistent/model",
        "critic=verifier",
        f"job.output_dir={out}",
        "job.progress=false",
        *extra,
    ]


@pytest.mark.parametrize(
    "content, line, field, reason",
    [
        (GOOD + '{"input": "x", "target": 1\n', 2, "target", "malformed JSON"),
        (GOOD + GOOD + '{"target": 3}\n', 3, "input", "missing"),
        (GOOD + '{"input": "   ", "target": 3}\n', 2, "input", "empty"),
        (GOOD.encode() + b'{"input": "caf\xe9 au lait?", "target": 3}\n', 2, "input", "invalid UTF-8"),
        (GOOD + GOOD + '{"input": "How many?", "target": "banana"}\n', 3, "target", "'banana' is not a number"),
        (GOOD + json.dumps({"input": "x" * 5_000_000, "target": 3}) + "\n", 2, "input",
         "5,000,000 characters long; the limit is 100,000"),
    ],
    ids=["malformed-json", "missing-field", "empty-question", "invalid-utf8", "gold-not-a-number", "5MB-line"],
)
def test_bad_rows_are_located_before_any_model_loads(tmp_path, content, line, field, reason):
    data = tmp_path / "problems.jsonl"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as err:
        run_job(compose(mawps_job(data, tmp_path / "run")))
    message = str(err.value)
    assert "problems.jsonl" in message and f"line {line}" in message and repr(field) in message
    assert reason in message
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_missing_data_file(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.jsonl: file not found"):
        run_job(compose(mawps_job(tmp_path / "nothere.jsonl", tmp_path / "run")))


@pytest.mark.usefixtures("ray_cluster")
def test_skipped_bad_rows_become_error_rows_while_the_rest_runs(tmp_path, tiny_model_dir):
    data = tmp_path / "problems.jsonl"
    data.write_text(GOOD + '{"target": 3}\n' + GOOD.replace("Tom", "Ann"))
    overrides = tiny_job(tiny_model_dir, tmp_path / "run") + [
        "task=mawps",
        f"task.path={data}",
        "task.skip_bad_rows=true",
    ]
    folder = run_job(compose(overrides))
    rows = pq.read_table(folder / "results.parquet").to_pylist()
    assert len(rows) == 3
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 1 and errors[0]["id"] == "bad-line-2" and "input" in errors[0]["error"]
    assert all(r["generated_tokens"] > 0 for r in rows if not r["error"])


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "treesearch.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_unknown_config_key_is_named_by_hydra(tmp_path):
    proc = run_cli("search", "search.options.c_puctt=2", cwd=tmp_path)
    assert proc.returncode != 0
    assert "c_puctt" in proc.stderr


@pytest.mark.slow  # loads a model or runs the CLI in a subprocess
def test_unknown_algorithm_option_value_is_named(tmp_path):
    proc = run_cli("search", "search.options.selection=ucb9", "policy.model=/nonexistent", cwd=tmp_path)
    assert proc.returncode != 0
    assert "selection" in proc.stderr and "ucb9" in proc.stderr


def test_sweep_runs_one_job_per_value_and_the_viewer_renders(tmp_path, tiny_model_dir):
    overrides = [o for o in tiny_job(tiny_model_dir, tmp_path / "unused") if not o.startswith("job.output_dir")]
    overrides = [o for o in overrides if not o.startswith("task.limit")] + ["task.limit=2", f"job.output_root={tmp_path}/runs"]
    proc = run_cli("search", "-m", "search.options.c_puct=0.5,2", *overrides, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(p for p in (tmp_path / "runs").glob("gsm8k-mcts-*") if p.is_dir())
    assert len(runs) == 2
    c_values = sorted(OmegaConf.load(r / "config.yaml").search.options.c_puct for r in runs)
    assert c_values == [0.5, 2.0]
    assert not list(tmp_path.glob("*.parquet")), "outputs must go to the run folders"
    view = run_cli("view", str(runs[0]), cwd=tmp_path)
    assert view.returncode == 0, view.stderr
    index = Path(view.stdout.strip().splitlines()[-1])
    assert index == runs[0] / "view.html" and index.read_text().count("<a href='view/") == 2
    pages = sorted((runs[0] / "view").glob("*.html"))
    assert len(pages) == 2 and all("chosen path" in p.read_text() for p in pages)


def test_a_problem_id_that_a_skipped_bad_row_would_take_is_refused(tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text('{"id": "bad-line-2", "input": "Tom has 2 apples and buys 3. How many?", "target": 5}\n'
                    '{"input": "x", "target": 1\n')
    overrides = mawps_job(data, tmp_path / "run", "+task.id_field=id", "task.skip_bad_rows=true")
    with pytest.raises(ValueError, match=r"\['bad-line-2'\] are also the ids given to skipped bad rows"):
        run_job(compose(overrides))
    assert not (tmp_path / "run" / "manifest.json").exists()


@pytest.mark.parametrize("value, reason", [("-5", "must be positive"), ("0", "must be positive")])
def test_a_bad_budget_is_named_before_any_model_loads(tmp_path, value, reason):
    data = tmp_path / "problems.jsonl"
    data.write_text(GOOD)
    with pytest.raises(ValueError, match=rf"search\.budget: Budget\.generated_tokens {reason}"):
        run_job(compose(mawps_job(data, tmp_path / "run", f"search.budget.generated_tokens={value}")))
    assert not (tmp_path / "run" / "manifest.json").exists()


@pytest.mark.parametrize("override", ["search.budget.generated_tokens=abc", "search.budget=abc"])
def test_a_budget_of_the_wrong_type_is_refused_when_the_config_is_composed(tmp_path, override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=re.escape(override)):
        compose(mawps_job(tmp_path / "problems.jsonl", tmp_path / "run", override))


def test_an_empty_data_file_is_an_error_not_an_empty_job(tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no problems to search"):
        run_job(compose(mawps_job(data, tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_budget_that_is_not_a_mapping_is_named_by_the_api_and_by_hand_built_job_configs():
    import treesearch
    from treesearch.search.budget import Budget

    with pytest.raises(ValueError, match=r"search\.budget must be a Budget or a mapping"):
        Budget.parse("abc", "search.budget")
    with pytest.raises(ValueError, match=r"^budget must be a Budget or a mapping"):
        treesearch.search(["q"], policy=None, budget="abc")


def test_trust_remote_code_at_its_default_leaves_the_job_digest_as_before(tmp_path):
    from treesearch.jobs import job_digest

    cfg = {"task": {"name": "gsm8k"}, "policy": {"model": "m"}, "critic": {"name": "prm", "model": "p"}, "search": {}}
    with_default = {**cfg, "critic": {**cfg["critic"], "trust_remote_code": False}}
    trusting = {**cfg, "critic": {**cfg["critic"], "trust_remote_code": True}}
    assert job_digest(with_default) == job_digest(cfg) != job_digest(trusting)


def test_an_unknown_cluster_kind_is_named_before_any_model_loads(tmp_path):
    overrides = ["policy.model=/nonexistent/model", f"job.output_dir={tmp_path / 'run'}", "cluster.kind=slurm"]
    with pytest.raises(ValueError, match=r"cluster\.kind must be one of \('ray', 'inprocess'\), got 'slurm'"):
        run_job(compose(overrides))
    assert not (tmp_path / "run").exists()


def scripted_job(data: Path, out: Path, *extra):
    """A job on the in-process cluster with a scripted policy: no model, no Ray."""
    return [
        "task=mawps", f"task.path={data}", "task.limit=null",
        "policy=target", "policy._target_=tests.doubles.scripted_policy", "+policy.seed=3",
        "critic=verifier", "cluster=inprocess", "search.budget.generated_tokens=60",
        f"job.output_dir={out}", "job.progress=false", *extra,
    ]


def test_resume_redoes_a_problem_whose_gold_answer_was_edited_and_keeps_the_rest(tmp_path):
    rows = [{"input": f"Question {i}?", "target": i % 4} for i in range(4)]
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = run_job(compose(scripted_job(data, tmp_path / "run")))
    first = {r["id"]: r for r in pq.read_table(folder / "results.parquet").to_pylist()}
    assert len(first) == 4 and all(r["error"] is None for r in first.values())
    stamps = {p.name: p.stat().st_mtime_ns for p in (folder / "results").iterdir()}

    rows[2]["target"] = 7  # the gold answer of the third problem is corrected
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_job(compose(scripted_job(data, tmp_path / "run")))
    second = {r["id"]: r for r in pq.read_table(folder / "results.parquet").to_pylist()}
    edited = [pid for pid in second if second[pid]["gold"] != first[pid]["gold"]]
    assert len(edited) == 1 and second[edited[0]]["gold"] == "7"
    changed = {p.name for p in (folder / "results").iterdir() if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == {RunFolder(folder).result_path(edited[0]).name}, "only the edited problem is computed again"
    assert json.loads((folder / "metrics.json").read_text())["resumed_skipped"] == 3
    log = (folder / "job.log").read_text()  # both runs, appended, with what each did
    assert log.count("job started: 4 problems") == 2
    assert "changed since their results were written" in log and "job finished: 1 computed, 3 skipped as done" in log


def test_ids_that_an_older_file_naming_merged_each_get_their_own_row(tmp_path):
    ids = ["a b", "a_b-806c5cd3", "x" * 100, "x" * 80 + "y" * 20, "a/b", "a_b"]
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"id": pid, "input": f"Question {i}?", "target": i}) + "\n"
                            for i, pid in enumerate(ids)))
    folder = run_job(compose(scripted_job(data, tmp_path / "run", "task.id_field=id")))
    rows = pq.read_table(folder / "results.parquet").to_pylist()
    assert [r["id"] for r in rows] == ids and [r["gold"] for r in rows] == [str(i) for i in range(len(ids))]
    assert len(list((folder / "results").iterdir())) == len(ids)
    again = run_job(compose(scripted_job(data, tmp_path / "run", "task.id_field=id")))  # a rerun swaps nothing
    assert pq.read_table(again / "results.parquet").to_pylist() == rows
    assert json.loads((again / "metrics.json").read_text())["resumed_skipped"] == len(ids)


@pytest.mark.slow  # runs the CLI in a subprocess
def test_a_missing_model_is_one_line_naming_it_not_a_traceback(tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text(GOOD)
    args = [*mawps_job(data, tmp_path / "run"), "cluster=inprocess"]
    proc = subprocess.run([sys.executable, "-m", "treesearch.cli", "search", *args], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 1
    assert "treesearch search: error:" in proc.stderr and "/nonexistent/model" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.usefixtures("ray_cluster")
def test_a_model_that_cannot_be_built_in_its_actor_is_named_in_one_line(tmp_path):
    from treesearch.cluster import ModelLoadError

    data = tmp_path / "problems.jsonl"
    data.write_text(GOOD)
    with pytest.raises(ModelLoadError, match=r"the policy model could not be built: FileNotFoundError: .*/nonexistent/model"):
        run_job(compose(mawps_job(data, tmp_path / "run")))

