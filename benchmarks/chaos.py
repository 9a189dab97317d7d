"""Fault injection on real jobs: actors and drivers killed, a replica that never comes back,
a poison problem, and the driver's memory on a large job. Each scenario counts what it
computed, skipped, lost and duplicated.

    python benchmarks/chaos.py [--problems 60] [--kills 6] [--driver-kills 3] [--memory 2000] [--quick]

Every job runs on a real local Ray cluster with simulated engines (`simulated_engine.py`:
sleep-based latency, deterministic steps), so the suite runs on a CPU in minutes:

- `actor_kills`: the policy and critic actors' processes are SIGKILLed `--kills` times,
  spread over one job's progress; every problem must appear exactly once, with no error
  row.
- `driver_kills`: the job's driver (a subprocess) is SIGKILLed `--driver-kills` times,
  spread over the job (the last one, half the time, inside the final writes), each time
  resumed by a new driver; afterwards no
  problem is lost or duplicated and no problem finished before a kill is computed again.
- `dead_replica`: a policy that crashes on every call; the job must end quickly with
  error rows and a bounded number of restarts (the pool's breaker).
- `poison_problem`: one problem crashes its actor on every request; it gets one error
  row, the others finish.
- `cluster_stop`: the job's own Ray cluster (started with `ray start --head`, joined by
  address) is killed mid-job; the driver must stop with a clear error that keeps the
  finished problems, and a rerun on a new cluster must finish the rest (not in --quick).
- `memory`: the driver's peak resident memory for jobs of `--memory / 2` and `--memory`
  problems (growth per 1,000 problems; results are written as they finish, not held).

Writes a JSON report (`--out`, default benchmarks/results/chaos.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def write_problems(path: Path, count: int) -> None:
    path.write_text("".join(json.dumps({"input": f"Problem {i}: what is {i} mod 20?", "target": i % 20}) + "\n"
                            for i in range(count)))


def overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "task=mawps", f"task.path={data}", "task.limit=null",
        "policy=target", "policy._target_=simulated_engine.SimulatedPolicy", "+policy.fixed_s=0.05",
        "+policy.per_sequence_s=0.001",
        "critic=target", "critic._target_=simulated_engine.simulated_value", "+critic._partial_=true",
        "search=mcts", "search.budget.generated_tokens=null", "search.budget.simulations=6",
        "cluster.policy.num_cpus=0", "cluster.critic.num_cpus=0",
        f"job.output_dir={out}", "job.progress=false", "job.trees_in_flight=8", *extra,
    ]


def compose(args: list[str]):
    from treesearch.config import compose as compose_config

    cfg = compose_config("search", args)
    path = os.pathsep.join(filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")]))
    for pool in ("policy", "critic"):  # the actors import simulated_engine from this folder
        cfg.cluster[pool].runtime_env = {"env_vars": {"PYTHONPATH": path}}
    return cfg


def census(folder: Path, expected: int) -> dict:
    """What the run folder holds: rows, unique ids, error rows, lost and duplicated."""
    import pyarrow.parquet as pq

    rows = pq.read_table(folder / "results.parquet").to_pylist()
    ids = [r["id"] for r in rows]
    return {"rows": len(rows), "unique": len(set(ids)), "errors": sum(1 for r in rows if r["error"]),
            "lost": expected - len(set(ids)), "duplicated": len(ids) - len(set(ids))}


def actor_kills(workdir: Path, problems: int, kills: int, rng: random.Random) -> dict:
    import ray

    from treesearch.jobs import run_job, start_models

    data = workdir / "actor_kills.jsonl"
    write_problems(data, problems)
    cfg = compose(overrides(data, workdir / "actor_kills"))
    models = start_models(cfg)
    models.ready()
    done, killed = threading.Event(), []
    results = workdir / "actor_kills" / "results"
    # kill at evenly spaced points of the job's progress, each a little randomly placed
    targets = sorted(max(1, int(problems * (i + rng.uniform(0.5, 1.0)) / (kills + 1))) for i in range(kills))

    def killer():
        while targets and not done.wait(0.02):
            if len(list(results.glob("*.json"))) < targets[0]:
                continue
            pool = rng.choice(models.pools())
            actor = pool.actors[rng.randrange(pool.replicas)]
            try:
                pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
                os.kill(pid, signal.SIGKILL)
                killed.append(pool.name)
                targets.pop(0)
            except Exception:  # the actor was already down or being replaced: try again
                pass

    thread = threading.Thread(target=killer, daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        folder = run_job(cfg, models)
    finally:
        done.set()
        thread.join()
        replacements = models.replacements()
        models.shutdown()
    return {"problems": problems, "kills": len(killed), "killed": killed, "replacements": replacements,
            "wall_s": time.perf_counter() - started, **census(folder, problems)}


DRIVER = """
import sys
sys.path[:0] = [{here!r}, {root!r}]
from chaos import compose
from treesearch.jobs import run_job
run_job(compose({args!r}))
"""


def driver_kills(workdir: Path, problems: int, kills: int, rng: random.Random) -> dict:
    import ray

    from treesearch.jobs import run_job

    data = workdir / "driver_kills.jsonl"
    write_problems(data, problems)
    out = workdir / "driver_kills"
    address = ray.get_runtime_context().gcs_address  # the drivers join this cluster: a kill orphans nothing
    args = overrides(data, out, f"cluster.address={address}")
    script = DRIVER.format(here=str(HERE), root=str(ROOT), args=args)
    results = out / "results"
    finished_before: dict[str, int] = {}
    kill_points = []
    for k in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=str(workdir))
        # kill k at about (k + 1) / (kills + 1) of the job; the last kill, half the time,
        # inside the final writes instead
        target = max(1, int(problems * (k + rng.uniform(0.5, 1.0)) / (kills + 1)))
        while proc.poll() is None and len(list(results.glob("*.json"))) < target:
            time.sleep(0.01)
        if proc.poll() is None and k == kills - 1 and rng.random() < 0.5:
            while proc.poll() is None and not (out / "results.parquet").exists():
                time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        kill_points.append(len(list(results.glob("*.json"))))
        for path in results.glob("*.json"):
            finished_before.setdefault(path.name, path.stat().st_mtime_ns)
    folder = run_job(compose(args))
    recomputed = sum(1 for name, mtime in finished_before.items() if (results / name).stat().st_mtime_ns != mtime)
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"problems": problems, "kills": kills, "results_at_each_kill": kill_points,
            "finished_before_last_run": len(finished_before), "recomputed": recomputed,
            "skipped_by_last_run": metrics["resumed_skipped"], **census(folder, problems)}


def crashing_job(workdir: Path, name: str, problems: int, *extra: str) -> dict:
    """A job whose policy crashes (as `extra` says), restarts left to the pool alone."""
    from treesearch.jobs import run_job

    data = workdir / f"{name}.jsonl"
    write_problems(data, problems)
    cfg = compose(overrides(data, workdir / name, *extra, "cluster.policy.max_restarts=0",
                            "cluster.policy.max_task_retries=0"))
    started = time.perf_counter()
    folder = run_job(cfg)
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"problems": problems, "wall_s": time.perf_counter() - started,
            "replacements": metrics["last_session"]["replacements"], **census(folder, problems)}


def dead_replica(workdir: Path, problems: int) -> dict:
    return crashing_job(workdir, "dead_replica", problems, "+policy.crash_always=true")


def poison_problem(workdir: Path, problems: int) -> dict:
    return {"poisoned": 1, **crashing_job(workdir, "poison", problems, "+policy.poison=poison-3")}


class ExternalCluster:
    """A Ray cluster started with `ray start --head` in a temp dir of its own, as a user's
    cluster is, so that `kill()` stops it (SIGKILL to its processes and their children,
    as when its head machine dies) without touching any other Ray cluster on the machine."""

    def __init__(self, env: dict):
        self.env = env
        self.temp_dir = tempfile.mkdtemp(prefix="tsr", dir="/tmp")  # short: Ray's socket paths have a limit
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        ray_cli = Path(sys.executable).with_name("ray")  # the ray of this Python, even when not on PATH
        subprocess.run([str(ray_cli) if ray_cli.exists() else "ray", "start", "--head", f"--port={self.port}", "--num-cpus=4", "--include-dashboard=false",
                        f"--temp-dir={self.temp_dir}"], env=self.env, check=True, capture_output=True)

    def kill(self) -> None:
        parents: dict[int, int] = {}
        own = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if self.temp_dir in cmdline:
                own.add(int(entry.name))
        grown = True
        while grown:  # workers and agents renamed themselves: find them as children
            more = {pid for pid, parent in parents.items() if parent in own} - own
            own |= more
            grown = bool(more)
        for pid in own:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def cluster_stop(workdir: Path, problems: int, rng: random.Random) -> dict:
    """The job's (external) Ray cluster is killed mid-job: the driver must stop with a
    clear error soon, keeping what finished; a rerun on a new cluster resumes it."""
    data = workdir / "cluster_stop.jsonl"
    write_problems(data, problems)
    out = workdir / "cluster_stop"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",  # the cluster's workers import simulated_engine
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    cluster = ExternalCluster(env)
    command = [sys.executable, "-m", "treesearch.cli", "search",
               *overrides(data, out, f"cluster.address={cluster.address}")]
    results = out / "results"
    try:
        cluster.start()
        proc = subprocess.Popen(command, cwd=str(workdir), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        target = max(1, int(problems * rng.uniform(0.2, 0.5)))
        while proc.poll() is None and len(list(results.glob("*.json"))) < target:
            time.sleep(0.01)
        at_stop = len(list(results.glob("*.json")))
        stopped = time.perf_counter()
        cluster.kill()
        try:
            output, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        stop_s = time.perf_counter() - stopped
        finished = {path.name: path.stat().st_mtime_ns for path in results.glob("*.json")}
        message = next((line for line in output.splitlines() if "rerun the same command" in line), None)
        cluster.start()
        resumed = subprocess.run(command, cwd=str(workdir), env=env, capture_output=True, text=True, timeout=600)
    finally:
        cluster.kill()
    recomputed = sum(1 for name, mtime in finished.items() if (results / name).stat().st_mtime_ns != mtime)
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    return {"problems": problems, "results_at_stop": at_stop, "exit_code": proc.returncode,
            "stopped_after_s": stop_s, "message": message, "finished_before_resume": len(finished),
            "resume_exit_code": resumed.returncode, "skipped_by_resume": metrics.get("resumed_skipped"),
            "recomputed": recomputed, **census(out, problems)}


MEMORY = """
import json, resource, sys
sys.path[:0] = [{here!r}, {root!r}]
from chaos import compose
from treesearch.jobs import run_job
run_job(compose({args!r}))
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def memory(workdir: Path, sizes: list[int]) -> dict:
    import ray

    address = ray.get_runtime_context().gcs_address
    rows = []
    for size in sizes:
        data = workdir / f"memory-{size}.jsonl"
        write_problems(data, size)
        args = overrides(data, workdir / f"memory-{size}", f"cluster.address={address}", "job.trees_in_flight=32",
                         "search.budget.simulations=2", "policy.fixed_s=0.01")
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", MEMORY.format(here=str(HERE), root=str(ROOT), args=args)],
                              cwd=str(workdir), capture_output=True, text=True, check=True)
        peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]
        rows.append({"problems": size, "driver_peak_rss_mb": peak, "wall_s": time.perf_counter() - started,
                     **census(workdir / f"memory-{size}", size)})
    growth = None
    if len(rows) >= 2:
        growth = (rows[-1]["driver_peak_rss_mb"] - rows[0]["driver_peak_rss_mb"]) / (
            (rows[-1]["problems"] - rows[0]["problems"]) / 1000)
    return {"jobs": rows, "growth_mb_per_1000_problems": growth}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=60)
    parser.add_argument("--kills", type=int, default=6, help="actor processes SIGKILLed in one job")
    parser.add_argument("--driver-kills", type=int, default=3)
    parser.add_argument("--memory", type=int, default=2000, help="the larger memory job's problems (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small jobs, 2 actor kills, 1 driver kill, no memory")
    parser.add_argument("--out", default="benchmarks/results/chaos.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.problems, args.kills, args.driver_kills, args.memory = 16, 2, 1, 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sys.path[:0] = [str(HERE)]
    import ray

    from treesearch.cluster import init_ray

    started_ray = not ray.is_initialized()
    init_ray(num_cpus=4)
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="treesearch-chaos-"))
    report: dict = {"command": "python benchmarks/chaos.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    try:
        report["actor_kills"] = actor_kills(workdir, args.problems, args.kills, rng)
        report["driver_kills"] = driver_kills(workdir, args.problems, args.driver_kills, rng)
        report["dead_replica"] = dead_replica(workdir, max(8, args.problems // 4))
        report["poison_problem"] = poison_problem(workdir, max(8, args.problems // 4))
        if not args.quick:
            report["cluster_stop"] = cluster_stop(workdir, max(60, args.problems), rng)
        if args.memory:
            report["memory"] = memory(workdir, [args.memory // 2, args.memory])
    finally:
        if started_ray:
            ray.shutdown()
    report["driver_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for name, row in report.items():
        if isinstance(row, dict):
            print(f"{name:>15}: " + ", ".join(f"{k}={v}" for k, v in row.items() if not isinstance(v, (list, dict))))
    return report


if __name__ == "__main__":
    main()
