"""How busy a search keeps the CPU engine, side by side in one run on one engine.

    python benchmarks/engine_busy.py [--problems 192] [--trees N] [--tokens 96] [--level word2-10]
        [--prm DIR] [--prm-prompts searched|zero_shot] [--repeats 3] [--threads 2] [--calls-in-flight auto[,1]] [--job]
        [--out benchmarks/results/engine_busy.json] [--quick]

On one OpenVINO policy (the packaged SmolLM2, fp32) and the same `--problems` arithmetic
problems (`task=arith`, the dev split of `--level`, 3-shot), each arm runs every problem
at `--tokens` generated tokens per problem, `--trees` problems in flight (by default as
many as the engine runs requests at once; more problems than that, so the tail of a run,
where the last trees finish one by one, does not dominate it):

- `self_consistency`: whole solutions, as many in flight as the budget affords (the
  engine at full batch: the reference rate);
- `mcts_free_critic`: MCTS* with the default options and a zero-cost critic (a constant),
  so the policy engine is what is timed;
- `mcts_prm`: MCTS* with a value-head PRM on OpenVINO (`--prm`, else a random head on the
  packaged model: the same cost as a trained one; `--prm-prompts zero_shot` has it read
  the prompts without their worked examples, as a PRM trained on zero-shot rows does).

Per arm (median of `--repeats` after a warm-up pass that caches the prompts): generated
tokens/s, the share of wall time the engine spent in its steps, the mean number of
requests running per engine step (how full its batches were), the mean number of
requests per policy call, and the ratio of its tok/s to self-consistency's. `--job` adds
the default `treesearch search` (the embedded default job: its search wall time from
metrics.json, after a first run that converts the model). `--calls-in-flight auto,1` adds the PRM-free
arms with the runner's old behaviour (one policy call at a time, so a call's slowest request
holds back the next call), named `ARM@calls=1`, for a side-by-side comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from prm_engine import random_prm  # noqa: E402  (a PRM folder with a random head)

ARMS = ("self_consistency", "mcts_free_critic", "mcts_prm")


def arm_run(policy, critic, task, problems, algorithm: str, tokens: int, trees: int, calls_in_flight: Optional[int],
            **options) -> dict:
    """One arm once: tok/s, the engine's busy share and occupancy, the mean policy batch."""
    from treesearch import Budget, Runner

    runner = Runner(policy, critic, task, trees_in_flight=trees, policy_calls_in_flight=calls_in_flight)
    before = policy.stats()
    start = time.perf_counter()
    results = asyncio.run(runner.run(problems, algorithm, Budget(generated_tokens=tokens), seed=0, **options))
    wall = time.perf_counter() - start
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{algorithm}: {len(errors)} problems failed, e.g. {errors[0]}")
    generated = sum(r.accounting.generated_tokens for r in results)
    spent = {key: value - before[key] for key, value in policy.stats().items()}
    return {"wall_s": wall, "generated_tokens": generated, "tok_s": generated / wall,
            "engine_busy": spent["model_seconds"] / wall,
            "mean_policy_batch": runner.stats.policy.mean_batch_size,
            "mean_running": spent["sequence_steps"] / max(1, spent["engine_steps"]),
            "policy_calls": runner.stats.policy.calls, "critic_calls": runner.stats.critic.calls,
            "accuracy": sum(bool(r.correct) for r in results) / len(results)}


def default_job(repeats: int) -> dict:
    """The embedded default `treesearch search`, `repeats` times after one run that
    converts the model: the search's wall time (metrics.json) and the process's."""
    runs = []
    for i in range(repeats + 1):
        folder = Path(tempfile.mkdtemp(prefix="engine-busy-job-"))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "treesearch.cli", "search", f"job.output_dir={folder}",
                        "job.progress=false"], check=True, stdout=subprocess.DEVNULL)
        process = time.perf_counter() - start
        metrics = json.loads((folder / "metrics.json").read_text())
        if i:  # the first run converts the model and warms the caches
            session = metrics["last_session"]
            runs.append({"process_s": process, "search_wall_s": session["wall_seconds"],
                         "generated_tokens": metrics["generated_tokens"]["total"],
                         "policy_call_s": session["policy"]["call_seconds"],
                         "critic_call_s": session["critic"]["call_seconds"]})
    return {"runs": runs, "median_search_wall_s": statistics.median(r["search_wall_s"] for r in runs),
            "median_process_s": statistics.median(r["process_s"] for r in runs)}


def measure_arms(args, arms: list[str], settings: list[Optional[int]]) -> dict:
    """Every arm under each calls-in-flight setting, taking turns within each repeat, on one
    OpenVINO engine after a warm-up pass; medians and ratios to self-consistency."""
    from critics import as_critic
    from critics.prm import PRMCritic
    from treesearch import Budget, Runner
    from treesearch.policy.openvino import OpenVINOPolicy
    from treesearch.tasks import ArithTask

    task = ArithTask(level=args.level)
    problems = task.load(split="dev", limit=task.available("dev", args.problems))
    policy = OpenVINOPolicy("smollm2", threads=args.threads)
    trees = args.trees or policy.calls_in_flight
    critics = {"self_consistency": None, "mcts_free_critic": as_critic(lambda state: 0.5)}
    if "mcts_prm" in arms:
        folder = args.prm or random_prm(Path(tempfile.mkdtemp(prefix="prm-")) / "prm", prompts=args.prm_prompts)
        critics["mcts_prm"] = PRMCritic(str(folder), device="cpu", threads=args.threads)
    setups = {"self_consistency": ("self_consistency", {"samples": 64, "parallel": 64}),
              "mcts_free_critic": ("mcts", {}), "mcts_prm": ("mcts", {})}
    asyncio.run(Runner(policy, None, task, trees_in_flight=trees).run(problems, "greedy", Budget(generated_tokens=args.tokens)))  # warm-up
    report = {"problems": len(problems), "trees_in_flight": trees, "level": args.level, "tokens_per_problem": args.tokens,
              "calls_in_flight": args.calls_in_flight, "arms": {},
              "prm": (str(args.prm) if args.prm else f"random head on smollm2, {args.prm_prompts} prompts")
              if "mcts_prm" in arms else None}
    # every arm under the first setting; the others compare the PRM-free arms (the PRM arm is the long one)
    variants = [(arm, calls) for i, calls in enumerate(settings) for arm in arms if i == 0 or arm != "mcts_prm"]
    names = {(arm, calls): arm if calls == settings[0] else f"{arm}@calls={calls or 'auto'}" for arm, calls in variants}
    runs: dict[str, list] = {name: [] for name in names.values()}
    for _ in range(args.repeats):  # arms take turns within a repeat
        for arm, calls in variants:
            algorithm, options = setups[arm]
            name = names[arm, calls]
            runs[name].append(arm_run(policy, critics[arm], task, problems, algorithm, args.tokens, trees, calls,
                                       **options))
            r = runs[name][-1]
            print(f"  {name:<26} {r['tok_s']:6.1f} tok/s  engine busy {100 * r['engine_busy']:4.0f}%  "
                  f"running {r['mean_running']:5.1f}  {r['wall_s']:6.1f} s", flush=True)
    reference = statistics.median(r["tok_s"] for r in runs["self_consistency"])
    for arm, rows in runs.items():
        tok_s = statistics.median(r["tok_s"] for r in rows)
        report["arms"][arm] = {"runs": rows, "tok_s": tok_s, "vs_self_consistency": tok_s / reference,
                               "engine_busy": statistics.median(r["engine_busy"] for r in rows),
                               "mean_policy_batch": statistics.median(r["mean_policy_batch"] for r in rows),
                               "mean_running": statistics.median(r["mean_running"] for r in rows),
                               "wall_s": statistics.median(r["wall_s"] for r in rows)}
        print(f"{arm:<26} median {tok_s:6.1f} tok/s = {report['arms'][arm]['vs_self_consistency']:.2f}x "
              f"self-consistency", flush=True)
    policy.shutdown()
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=192)
    parser.add_argument("--trees", type=int, default=None,
                        help="trees in flight (default: as many as the engine runs requests at once, 64)")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--level", default="word2-10")
    parser.add_argument("--prm", type=Path, default=None)
    parser.add_argument("--prm-prompts", choices=("searched", "zero_shot"), default="searched",
                        help="the random PRM reads the prompt as searched (3-shot) or without its worked examples "
                             "(as a PRM trained on zero-shot rows does)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls-in-flight", default="auto",
                        help="policy calls in flight at once: auto (from the engine) or a number; "
                             "a list (auto,1) runs every arm under each, the ratios against the first's self-consistency")
    parser.add_argument("--arms", default=",".join(ARMS), help='the arms (with --job, "" for the job alone)')
    parser.add_argument("--job", action="store_true", help="also time the default `treesearch search`")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="8 problems, 64 tokens, 1 repeat, a temporary file (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.problems, args.trees, args.tokens, args.repeats = 8, 4, 64, 1
    arms = [a for a in args.arms.split(",") if a]
    if (set(arms) - set(ARMS) or "self_consistency" not in arms) and (arms or not args.job):
        parser.error(f"--arms: some of {ARMS}, self_consistency among them (the reference); none with --job")
    out = args.out or (Path(tempfile.mkdtemp(prefix="engine-busy-")) / "engine_busy.json" if args.quick
                       else HERE / "results" / "engine_busy.json")
    settings = [None if c == "auto" else int(c) for c in args.calls_in_flight.split(",")]
    import torch

    torch.set_num_threads(args.threads)
    report = {"repeats": args.repeats, "threads": args.threads,
              "machine": f"{platform.machine()}, torch {torch.__version__}"}
    if arms:
        report.update(measure_arms(args, arms, settings))
    if args.job:
        report["default_job"] = default_job(args.repeats)
        print(f"default job: search wall {report['default_job']['median_search_wall_s']:.1f} s "
              f"(median of {args.repeats})", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
