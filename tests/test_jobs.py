"""Batch search jobs on a real local Ray cluster with a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from treesearch.jobs import run_job
from treesearch.runfolder import RunFolder

pytestmark = pytest.mark.usefixtures("ray_cluster")


def compose(overrides):
    from treesearch.config import compose as compose_config

    return compose_config("search", overrides)


def tiny_job(tiny_model_dir, out, *extra):
    return [
        f"policy.model={tiny_model_dir}",
        "policy.device=cpu",
        "critic=verifier",
        "task.limit=6",
        "search.budget.generated_tokens=96",
        "search.options.max_step_tokens=12",
        "search.options.max_solution_tokens=48",
        "search.options.max_depth=4",
        f"job.output_dir={out}",
        "job.progress=false",
        "job.trees_in_flight=3",
        *extra,
    ]


def results(folder):
    return pq.read_table(Path(folder) / "results.parquet").to_pylist()


def test_job_writes_a_complete_run_folder(tiny_model_dir, tmp_path):
    folder = run_job(compose(tiny_job(tiny_model_dir, tmp_path / "run", "job.abstain_below=0.5")))
    rows = results(folder)
    assert [r["id"] for r in rows] == json.loads((folder / "manifest.json").read_text())["problem_ids"]
    assert len(rows) == 6 and all(r["error"] is None for r in rows)
    assert all(r["generated_tokens"] > 0 and r["gold"] for r in rows)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["problems"] == 6 and metrics["graded"] == 6
    assert metrics["last_session"]["policy"]["requests"] > 0
    # selective answering: the verifier's values decide what is answered
    selective = metrics["selective"]
    low = sorted(r["id"] for r in rows if r["value"] is None or not r["value"] >= 0.5)
    assert sorted(selective["abstained"]) == low and selective["answered"] == 6 - len(low)
    assert [p["coverage"] for p in selective["curve"]] == [1.0, 0.9, 0.75, 0.5, 0.25]
    assert (folder / "config.yaml").read_text().count("verifier") >= 1
    trees = sorted((folder / "trees").glob("*.parquet"))
    assert len(trees) == 6
    # the tree viewer renders a finished problem
    from treesearch.viewer import write_view

    index = write_view(folder)  # the index over the run, and a page per problem
    assert index == folder / "view.html" and index.read_text().count("<a href='view/") == 6
    page = write_view(folder, rows[0]["id"])
    text = page.read_text()
    assert page.parent == folder / "view" and "<details" in text and "#0</span>" in text


def test_pools_are_reused_and_reloaded_in_place_between_jobs(tiny_model_dir, tmp_path):
    import shutil

    import ray

    from treesearch.cluster import ModelPools

    first = compose(tiny_job(tiny_model_dir, tmp_path / "a", "task.limit=2"))
    pools = ModelPools(first)
    try:
        run_job(first, pools)
        actor = pools.policy.actors[0]
        assert pools.critic is not None
        newer = tmp_path / "newer-model"
        shutil.copytree(tiny_model_dir, newer)
        second = compose(tiny_job(newer, tmp_path / "b", "task.limit=2", "search=greedy", "critic=none"))
        folder = run_job(second, pools)
        assert pools.policy.actors[0] is actor, "the actor must be reused, not restarted"
        assert ray.get(actor.describe.remote())["model"] == str(newer)
        assert pools.critic is None
        assert len(results(folder)) == 2
    finally:
        pools.shutdown()


def test_an_inprocess_job_finds_what_the_ray_job_finds_and_reuses_its_models(tiny_model_dir, tmp_path):
    """cluster=inprocess is the same job without Ray: the same answers, tokens and trees,
    and the models are reconfigured in place between jobs like actor pools."""
    from treesearch.hosting import LocalModels

    on_ray = results(run_job(compose(tiny_job(tiny_model_dir, tmp_path / "ray", "task.limit=3"))))
    first = compose(tiny_job(tiny_model_dir, tmp_path / "inprocess", "task.limit=3", "cluster=inprocess"))
    models = LocalModels(first)
    try:
        in_process = results(run_job(first, models))
        policy = models.policy
        assert models.critic is not None
        second = compose(tiny_job(tiny_model_dir, tmp_path / "greedy", "task.limit=3", "cluster=inprocess",
                                  "search=greedy", "critic=none"))
        assert len(results(run_job(second, models))) == 3
        assert models.policy is policy, "an unchanged policy config must keep its model"
        assert models.critic is None
    finally:
        models.shutdown()
    keys = ("id", "answer", "correct", "generated_tokens", "simulations", "solution")
    assert [{k: r[k] for k in keys} for r in in_process] == [{k: r[k] for k in keys} for r in on_ray]


def test_failed_searches_are_retried_on_resume_but_bad_input_rows_are_not(tmp_path):
    from treesearch.runfolder import BAD_INPUT

    folder = RunFolder(tmp_path)
    folder.write_error("p1", "RayActorError: the actor died")
    folder.write_error("bad-line-3", f"{BAD_INPUT}line 3: missing field")
    (folder.results / "p2.json").write_text(json.dumps({"id": "p2", "error": None}))
    assert folder.finished() == {"p2", "bad-line-3"}
    assert folder.finished(redo_errors=False) == {"p1", "p2", "bad-line-3"}


@pytest.mark.parametrize("declared, max_concurrency, expected", [(8, 4, 4), (2, 4, 2), (None, 4, 1)])
def test_a_policy_pool_learns_how_many_calls_its_backend_takes_at_once(declared, max_concurrency, expected):
    # a backend that batches continuously takes several calls per replica (at most the
    # actor's max_concurrency); one that does not say so takes one at a time
    from treesearch.cluster import ModelPools

    target = (["policy._target_=tests.doubles.continuous_policy", f"+policy.calls_in_flight={declared}"] if declared
              else ["policy._target_=tests.doubles.scripted_policy"])
    cfg = compose(["policy=target", *target, "+policy.seed=3", "critic=none", "search=greedy",
                   f"cluster.policy.max_concurrency={max_concurrency}"])
    pools = ModelPools(cfg)
    try:
        pools.ready()
        assert pools.clients().policy.calls_in_flight == expected
    finally:
        pools.shutdown()
