"""The fault suite: what a job survives, and how it ends when it cannot go on.

Fast cases use stand-in actors (no Ray cluster): the actor pool's breaker (a poison
request fails alone wherever it sits in a batch; a model that cannot serve is taken out
after a bounded number of attempts), a stopped cluster ending a job once instead of per
problem, a dead cluster address refused before Ray waits on it. The `slow` cases run
real jobs on a real local Ray cluster: actors and drivers killed, a replica that never
comes back, `benchmarks/chaos.py --quick`, and an external cluster stopped mid-job.
Bad input (files, rows, config values) is covered in test_job_inputs.py and
test_tasks.py; `benchmarks/chaos.py` holds the long runs whose figures are in BENCHMARKS.md.
"""

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray.exceptions

from tests.test_benchmarks import load
from tests.test_jobs import compose, results, tiny_job
from treesearch import cluster
from treesearch.batching import Batcher
from treesearch.jobs import run_job
from treesearch.types import JobStopped

ROOT = Path(__file__).resolve().parent.parent


class _Method:
    def __init__(self, actor, name):
        self.actor, self.name = actor, name

    def remote(self, items):
        async def go():
            self.actor.calls += 1
            if self.actor.dead or any("poison" in i for i in items):
                raise ray.exceptions.RayActorError()
            return [f"ok:{i}" for i in items]

        return go()


class _Actor:
    def __init__(self, dead):
        self.dead, self.calls = dead, 0

    def __getattr__(self, name):
        return _Method(self, name)


def pool_of(monkeypatch, dead=False):
    monkeypatch.setattr(ray, "kill", lambda *a, **k: None)
    monkeypatch.setattr(cluster, "current_gcs_address", lambda: "127.0.0.1:1")
    monkeypatch.setattr(cluster, "gcs_answers", lambda address: True)  # the cluster is up
    real_sleep = asyncio.sleep
    monkeypatch.setattr(cluster.asyncio, "sleep", lambda s: real_sleep(0))

    class Started:
        @staticmethod
        def options(**_):
            class Remote:
                @staticmethod
                def remote(*_):
                    return _Actor(dead)

            return Remote

    return cluster.ActorPool(Started, (), {}, name="policy")


def run(pool, items):
    async def batch(key, part):
        return await pool.call(0, "expand", part, problems=frozenset(part))

    async def main():
        batcher = Batcher(batch, max_batch_size=32, max_wait_s=0.01, name="policy")
        out = await asyncio.gather(*(batcher.submit("k", i) for i in items), return_exceptions=True)
        await batcher.close()
        return [type(r).__name__ if isinstance(r, Exception) else r for r in out]

    return asyncio.run(main())


@pytest.mark.parametrize("order", [["a", "b", "poison", "c"], ["poison", "a", "b", "c"],
                                   ["poison-1", "poison-2", "a", "b"]])
def test_a_poison_request_fails_alone_wherever_it_sits_in_its_batch(monkeypatch, order):
    pool = pool_of(monkeypatch)
    out = run(pool, order)
    assert [r == "RayActorError" for r in out] == ["poison" in i for i in order]
    assert pool.broken == [None]
    assert run(pool, ["d"]) == ["ok:d"], "a later request is served"


def test_a_model_that_cannot_serve_is_taken_out_and_later_calls_fail_at_once(monkeypatch):
    pool = pool_of(monkeypatch, dead=True)
    out = run(pool, [f"p{i}" for i in range(12)])
    assert set(out) <= {"RayActorError", "ReplicaDown"} and "ReplicaDown" in out
    assert pool.broken[0] is not None and "3 different problems" in pool.broken[0]
    assert pool.replacements <= 12, "bounded restarts, not three per problem"
    assert run(pool, ["late"]) == ["ReplicaDown"]
    assert pool.revive() == {0} and pool.broken == [None]


def test_a_stopped_cluster_stops_the_job_once_instead_of_failing_every_problem(monkeypatch):
    """Every request fails because the cluster is gone: the first failure finds that out
    (one probe), every request gets ClusterLost, none is retried alone or restarted."""
    pool = pool_of(monkeypatch, dead=True)
    probes = []

    def gone(address):
        probes.append(address)
        return False

    monkeypatch.setattr(cluster, "gcs_answers", gone)
    out = run(pool, [f"p{i}" for i in range(12)])
    assert out == ["ClusterLost"] * 12
    assert probes == ["127.0.0.1:1"] and pool.replacements == 0
    assert pool.actors[0].calls == 1, "a batch that failed for the whole job is not retried request by request"
    assert issubclass(cluster.ClusterLost, JobStopped)
    assert "127.0.0.1:1 stopped answering" in pool.lost


def test_a_job_stopped_ends_the_runner_instead_of_writing_error_rows():
    from treesearch.runner import Runner
    from treesearch.tasks import make_task
    from treesearch.types import Problem

    class GonePolicy:
        async def expand(self, states, n, params):
            raise cluster.ClusterLost("the Ray cluster at 127.0.0.1:1 stopped answering")

        async def complete(self, states, params):
            raise cluster.ClusterLost("the Ray cluster at 127.0.0.1:1 stopped answering")

    written = []
    runner = Runner(GonePolicy(), None, make_task("gsm8k"), trees_in_flight=2)
    problems = [Problem(id=f"p{i}", question="1 + 1?", gold="2") for i in range(4)]
    with pytest.raises(cluster.ClusterLost, match="stopped answering"):
        asyncio.run(runner.run(problems, "greedy", on_result=written.append))
    assert written == [], "no error row for a problem the job could not run"


def test_a_dead_cluster_address_is_refused_before_ray_waits_on_it(monkeypatch):
    """ray.init on an address where nothing listens waits for minutes, silently."""
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **_: pytest.fail("ray.init must not be called"))
    monkeypatch.setattr(cluster, "GCS_WAIT_S", 0.2)
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(cluster.ClusterLost, match=rf"cluster.address=127.0.0.1:{port}: no Ray cluster answers.*ray start --head"):
        cluster.init_ray(f"127.0.0.1:{port}")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("address, gcs", [("10.0.0.5:6379", "10.0.0.5:6379"), ("ray://head:10001", None),
                                          ("[::1]:6379", "[::1]:6379"), ("head", None)])
def test_the_gcs_address_is_told_where_it_can_be(address, gcs):
    assert cluster._known_gcs_address(address) == gcs


def test_a_model_that_fails_to_build_is_named_by_its_own_error():
    text = ("The actor died because of an error raised in its creation task, ray::_PolicyHost.__init__()\n"
            "Traceback (most recent call last):\n  File \"x.py\", line 3, in f\n"
            "    raise FileNotFoundError(\nFileNotFoundError: model '/nonexistent' is not a local model folder\n")
    assert cluster.root_cause(RuntimeError(text)) == "FileNotFoundError: model '/nonexistent' is not a local model folder"
    assert cluster.root_cause(RuntimeError("the actor is gone")) == "the actor is gone"
    assert issubclass(cluster.ModelLoadError, ValueError)  # the CLI reports it in one line


@pytest.mark.usefixtures("ray_cluster")
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


@pytest.mark.usefixtures("ray_cluster")
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
    env = dict(os.environ, PYTHONPATH=str(ROOT))
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


@pytest.mark.usefixtures("ray_cluster")
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
    root = str(ROOT)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for extra, joins in (({}, False), ({"RAY_ADDRESS": running}, True)):
        done = subprocess.run([sys.executable, "-c", script], env={**env, **extra, "PYTHONPATH": root},
                              cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (done.stdout.strip().splitlines()[-1] == running) == joins, extra


@pytest.mark.usefixtures("ray_cluster")
def test_a_policy_that_never_comes_back_ends_the_job_fast_with_error_rows(tmp_path):
    """A pool-level breaker: the replica is taken out after a bounded number of failed
    calls instead of being restarted for every remaining problem."""
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"input": f"Q{i}?", "target": i}) + "\n" for i in range(12)))
    env = {"env_vars": {"PYTHONPATH": str(ROOT)}}
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


@pytest.mark.usefixtures("ray_cluster")
def test_chaos_quick_loses_and_duplicates_nothing_and_recomputes_no_finished_problem(tmp_path):
    report = load("chaos").main(["--quick", "--out", str(tmp_path / "chaos.json")])
    for name in ("actor_kills", "driver_kills", "dead_replica", "poison_problem"):
        row = report[name]
        assert row["lost"] == 0 and row["duplicated"] == 0 and row["rows"] == row["problems"], name
    assert report["actor_kills"]["errors"] == 0 and report["actor_kills"]["kills"] >= 1
    assert report["driver_kills"]["recomputed"] == 0
    assert report["dead_replica"]["errors"] == report["dead_replica"]["problems"]
    assert report["poison_problem"]["errors"] == 1


@pytest.mark.slow  # starts its own Ray cluster with `ray start`, beside the session's
def test_a_cluster_stopped_mid_job_ends_it_with_a_clear_error_and_a_resumable_folder(tmp_path):
    row = load("chaos").cluster_stop(tmp_path, 40, random.Random(1))
    assert row["exit_code"] == 1 and row["stopped_after_s"] < 60, row
    assert row["message"] and f"keeps the {row['finished_before_resume']} of 40 problems" in row["message"]
    assert 0 < row["finished_before_resume"] < 40
    assert row["resume_exit_code"] == 0 and row["skipped_by_resume"] == row["finished_before_resume"]
    assert row["recomputed"] == 0 and row["lost"] == 0 and row["duplicated"] == 0 and row["errors"] == 0


@pytest.mark.slow  # runs two jobs in subprocesses
def test_a_second_job_on_a_run_folder_fails_at_once_and_a_killed_jobs_lock_is_taken_over(tmp_path):
    chaos = load("chaos")
    data, out = tmp_path / "problems.jsonl", tmp_path / "run"
    chaos.write_problems(data, 30)
    command = [sys.executable, "-m", "treesearch.cli", "search", *chaos.overrides(data, out, "cluster=inprocess"),
               "policy.fixed_s=0.2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)])}
    first = subprocess.Popen(command, env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list((out / "results").glob("*.json")):
            assert first.poll() is None and time.time() < deadline, "the first job did not get going"
            time.sleep(0.05)
        started = time.perf_counter()
        second = subprocess.run(command, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and time.perf_counter() - started < 30
        assert f"is in use by another job (pid {first.pid} on " in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None, "the second job left the first alone"
    finally:
        first.kill()
        first.wait()
    finished = len(list((out / "results").glob("*.json")))
    assert 0 < finished < 30
    resumed = subprocess.run(command, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # the killed job's lock went with it
    assert chaos.census(out, 30) == {"rows": 30, "unique": 30, "errors": 0, "lost": 0, "duplicated": 0}
    assert json.loads((out / "metrics.json").read_text())["resumed_skipped"] == finished
