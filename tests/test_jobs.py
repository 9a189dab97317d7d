"""Batch search jobs on a real local Ray cluster with a tiny random model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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
    folder = run_job(compose(tiny_job(tiny_model_dir, tmp_path / "run")))
    rows = results(folder)
    assert [r["id"] for r in rows] == json.loads((folder / "manifest.json").read_text())["problem_ids"]
    assert len(rows) == 6 and all(r["error"] is None for r in rows)
    assert all(r["generated_tokens"] > 0 and r["gold"] for r in rows)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["problems"] == 6 and metrics["graded"] == 6
    assert metrics["last_session"]["policy"]["requests"] > 0
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


def test_killed_policy_actor_does_not_lose_or_repeat_problems(tiny_model_dir, tmp_path):
    import ray

    from treesearch import cluster

    created = []
    original = cluster.ActorPool._start

    def spy(self):
        actor = original(self)
        created.append((self.name, actor))
        return actor

    cluster.ActorPool._start = spy
    killed = []

    def killer():
        # kill the first policy actor as soon as it has served a request
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            policies = [a for name, a in created if name == "policy"]
            if policies and list((tmp_path / "run" / "results").glob("*.json")):
                ray.kill(policies[0])
                killed.append(policies[0])
                return
            time.sleep(0.05)

    import threading

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        folder = run_job(compose(tiny_job(tiny_model_dir, tmp_path / "run", "task.limit=12", "job.trees_in_flight=2")))
    finally:
        cluster.ActorPool._start = original
        thread.join()
    assert killed, "the test did not get to kill the actor"
    rows = results(folder)
    ids = [r["id"] for r in rows]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["last_session"]["replacements"]["policy"] >= 1


def test_driver_killed_mid_job_resumes_without_recomputing(tiny_model_dir, tmp_path):
    import ray

    out = tmp_path / "run"
    # the killed driver joins this session's cluster, so killing it orphans no Ray processes
    address = ray.get_runtime_context().gcs_address
    overrides = tiny_job(tiny_model_dir, out, "task.limit=10", "job.trees_in_flight=1", f"cluster.address={address}")
    script = (
        "import sys; from tests.test_jobs import compose; from treesearch.jobs import run_job; "
        f"run_job(compose({overrides!r}))"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=str(tmp_path))
    results_dir = out / "results"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(results_dir.glob("*.json"))) < 3:
        if proc.poll() is not None:
            pytest.fail(f"the job ended (rc {proc.returncode}) before it could be killed")
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in results_dir.glob("*.json")}
    assert 3 <= len(before) < 10, "kill the job mid-way"

    folder = run_job(compose(overrides[:-1]))  # resume from this process (same cluster)
    rows = results(folder)
    assert len(rows) == 10 and len({r["id"] for r in rows}) == 10
    after = {p.name: p.stat().st_mtime_ns for p in results_dir.glob("*.json")}
    assert all(after[name] == mtime for name, mtime in before.items()), "finished problems were recomputed"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["resumed_skipped"] == len(before)
    # the folder refuses a different job
    with pytest.raises(ValueError, match="holds a different job"):
        run_job(compose(tiny_job(tiny_model_dir, out, "task.limit=10", "search.options.c_puct=3.0")))


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


def test_an_unset_cluster_address_starts_a_private_ray_unless_ray_address_names_one(tmp_path):
    """A cluster that merely runs on the machine (found by Ray's own discovery) is not
    joined; one named by RAY_ADDRESS (as `ray job submit` sets it) is."""
    import ray

    running = ray.get_runtime_context().gcs_address
    script = (
        "import ray, ray._private.services as services; from treesearch.cluster import init_ray; "
        f"services.get_ray_address_from_environment = lambda *a, **k: {running!r}; "  # as if discovered
        "init_ray(None, num_cpus=1); print(ray.get_runtime_context().gcs_address); ray.shutdown()"
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for extra, joins in (({}, False), ({"RAY_ADDRESS": running}, True)):
        done = subprocess.run([sys.executable, "-c", script], env={**env, **extra, "PYTHONPATH": root},
                              cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (done.stdout.strip().splitlines()[-1] == running) == joins, extra


def test_a_policy_that_never_comes_back_ends_the_job_fast_with_error_rows(tmp_path):
    """A pool-level breaker: the replica is taken out after a bounded number of failed
    calls instead of being restarted for every remaining problem."""
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"input": f"Q{i}?", "target": i}) + "\n" for i in range(12)))
    env = {"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}}
    overrides = [
        "task=mawps", f"task.path={data}", "task.limit=null", "critic=none", "search=greedy",
        "policy=target", "policy._target_=tests.doubles.CrashingPolicy",
        "cluster.policy.max_restarts=0", "cluster.policy.max_task_retries=0",
        f"job.output_dir={tmp_path / 'run'}", "job.progress=false", "job.trees_in_flight=2",
    ]
    cfg = compose(overrides)
    cfg.cluster.policy.runtime_env = env  # the actor imports tests.doubles
    started = time.perf_counter()
    folder = run_job(cfg)
    rows = results(folder)
    assert len(rows) == 12 and all(r["error"] for r in rows)
    assert any("is down" in r["error"] for r in rows)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["last_session"]["replacements"]["policy"] <= 12, "bounded restarts, not three per problem"
    assert time.perf_counter() - started < 120
