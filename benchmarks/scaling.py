"""A batch job's throughput against the number of Ray policy actors (1 to 32).

    python benchmarks/scaling.py [--actors 1,2,4,8,16,32] [--problems-per-actor 64]
        [--trees-per-actor 16] [--fixed-ms 400] [--per-sequence-ms 2] [--quick]

The serving side is simulated: each actor hosts `simulated_engine.SimulatedPolicy`, which
sleeps like one GPU engine (calls one at a time, `fixed + per_sequence * sequences`
seconds) instead of running a model, so 32 "GPUs" fit on this machine. Everything else
is the product: a real local Ray cluster, `run_job` with its actor pools, affinity
routing, MCTS* searches, the critic actor (a Python value function by import path), and
the run folder with a result file and a Parquet tree per problem.

Weak scaling: the work grows with the actors (`problems-per-actor` problems,
`trees-per-actor` trees in flight per actor), so ideal wall time stays flat and
efficiency(k) = throughput(k) / (k * throughput(1)). Actor start-up is excluded: pools are
started and ready before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent


def compose(overrides: list[str]):
    from omegaconf import open_dict

    from treesearch.config import compose as compose_config

    cfg = compose_config("search", overrides)
    with open_dict(cfg):  # the actors import simulated_engine from this folder
        for pool in ("policy", "critic"):
            path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
            cfg.cluster[pool].runtime_env = {"env_vars": {"PYTHONPATH": path}}
    return cfg


def write_problems(path: Path, count: int) -> None:
    rows = [{"input": f"What is {i} + {i % 7}?", "target": i + i % 7} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def job_config(actors: int, data: Path, out: Path, args) -> object:
    return compose([
        "task=mawps", f"task.path={data}", f"task.limit={actors * args.problems_per_actor}",
        "policy=target", "policy._target_=simulated_engine.SimulatedPolicy",
        f"+policy.fixed_s={args.fixed_ms / 1000}", f"+policy.per_sequence_s={args.per_sequence_ms / 1000}",
        "critic=target", "critic._target_=simulated_engine.simulated_value", "+critic._partial_=true",
        "search=mcts", "search.budget.generated_tokens=null", f"search.budget.simulations={args.simulations}",
        f"cluster.policy.replicas={actors}", "cluster.policy.num_cpus=0", "cluster.policy.max_concurrency=8",
        "cluster.critic.num_cpus=0", f"cluster.critic.replicas={max(1, actors // 8)}",
        f"job.trees_in_flight={actors * args.trees_per_actor}", f"job.max_batch_size={2 * args.trees_per_actor}",  # per replica: 2 simulations per tree
        f"job.output_dir={out}", "job.progress=false",
    ])


def run_jobs(actors: int, data: Path, workdir: Path, args, repeats: int) -> list[dict]:
    """`repeats` jobs on one set of pools (started and ready before the clock starts)."""
    from treesearch.cluster import ModelPools
    from treesearch.jobs import run_job

    cfg = job_config(actors, data, workdir / f"actors-{actors}-0", args)
    pools = ModelPools(cfg)
    runs = []
    try:
        pools.ready()
        for repeat in range(repeats):
            out = workdir / f"actors-{actors}-{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            run_job(job_config(actors, data, out, args), pools)
            wall = time.perf_counter() - start
            metrics = json.loads((out / "metrics.json").read_text())
            if metrics["errors"]:
                raise RuntimeError(f"{actors} actors: {metrics['errors']} searches failed; see {out}")
            runs.append({
                "actors": actors,
                "problems": metrics["problems"],
                "wall_s": wall,
                "problems_per_s": metrics["problems"] / wall,
                "generated_tokens_per_s": metrics["generated_tokens"]["total"] / wall,
                "mean_policy_batch": metrics["last_session"].get("policy", {}).get("mean_batch_size"),
            })
    finally:
        pools.shutdown()
    return runs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actors", default="1,2,4,8,16,32")
    parser.add_argument("--problems-per-actor", type=int, default=64)
    parser.add_argument("--trees-per-actor", type=int, default=16)
    parser.add_argument("--simulations", type=int, default=8, help="MCTS* simulations per problem")
    parser.add_argument("--fixed-ms", type=float, default=400.0, help="simulated engine: fixed time per call")
    parser.add_argument("--per-sequence-ms", type=float, default=2.0, help="simulated engine: time per sequence")
    parser.add_argument("--repeats", type=int, default=3, help="jobs per actor count (median reported)")
    parser.add_argument("--quick", action="store_true", help="1 and 2 actors, small jobs")
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.actors, args.problems_per_actor, args.trees_per_actor, args.fixed_ms, args.repeats = "1,2", 8, 4, 50.0, 1
    counts = sorted({int(a) for a in args.actors.split(",")})
    if counts[0] != 1:
        parser.error("--actors must include 1 (efficiency is measured against one actor)")

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from treesearch.cluster import init_ray

    started_ray = not ray.is_initialized()
    init_ray()
    workdir = Path(tempfile.mkdtemp(prefix="treesearch-scaling-"))
    data = workdir / "problems.jsonl"
    write_problems(data, max(counts) * args.problems_per_actor)
    rows = []
    try:
        warm = argparse.Namespace(**{**vars(args), "problems_per_actor": 4, "trees_per_actor": 4})
        run_jobs(1, data, workdir, warm, 1)  # imports, compilation and caches, outside the clock
        for actors in counts:
            runs = run_jobs(actors, data, workdir, args, args.repeats)
            row = dict(runs[0], wall_s=statistics.median(r["wall_s"] for r in runs),
                       problems_per_s=statistics.median(r["problems_per_s"] for r in runs),
                       generated_tokens_per_s=statistics.median(r["generated_tokens_per_s"] for r in runs))
            base = rows[0] if rows else row
            row["speedup"] = row["problems_per_s"] / base["problems_per_s"]
            row["efficiency"] = row["speedup"] / (actors / base["actors"])
            rows.append(row)
            print(f"  {actors:>2} actors: {row['problems']:>5} problems in {row['wall_s']:6.1f} s = "
                  f"{row['problems_per_s']:6.2f} problems/s, speedup {row['speedup']:5.2f}, "
                  f"efficiency {row['efficiency']:.2f} (mean policy batch {row['mean_policy_batch']})", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if started_ray:
            ray.shutdown()
    report = {
        "date": str(date.today()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "simulated_engine": {"fixed_ms": args.fixed_ms, "per_sequence_ms": args.per_sequence_ms},
        "problems_per_actor": args.problems_per_actor,
        "trees_per_actor": args.trees_per_actor,
        "simulations_per_problem": args.simulations,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
