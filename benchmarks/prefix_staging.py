"""Staged against unstaged prompt prefixes on the OpenVINO engine, side by side.

    python benchmarks/prefix_staging.py [--level word2-50] [--n 50] [--repeats 3]
        [--model smollm2] [--out benchmarks/results/prefix_staging.json] [--quick]

Each repeat builds two fresh pipelines (empty prefix caches), one with `stage_prefixes`
and one without, and runs greedy over the same `--n` few-shot arith problems, every tree
in flight at once (all requests arrive together behind the same worked examples), then
self-consistency (8 samples) on the same pipeline. Reports the wall seconds of each, the
median over repeats, the ratio, and whether the two gave the same solutions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(policy, task, problems, algorithm: str, **options) -> tuple[float, list[str]]:
    from treesearch import Budget, Runner

    runner = Runner(policy, None, task, trees_in_flight=len(problems), max_batch_size=64)
    start = time.perf_counter()
    results = asyncio.run(runner.run(problems, algorithm, Budget(generated_tokens=2000), **options))
    return time.perf_counter() - start, [r.solution for r in results]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", default="word2-50")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "prefix_staging.json"))
    parser.add_argument("--quick", action="store_true", help="8 problems, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 8, 1
    import torch

    from treesearch.policy import make_policy
    from treesearch.tasks import ArithTask

    torch.set_num_threads(args.threads)
    task = ArithTask(level=args.level)
    problems = task.load(split="dev", limit=args.n)
    runs = []
    for repeat in range(args.repeats):
        for staged in (False, True):
            policy = make_policy("openvino", model=args.model, threads=args.threads, max_batch_size=64,
                                 stage_prefixes=staged)
            try:
                greedy_s, greedy = timed(policy, task, problems, "greedy")
                sampled_s, sampled = timed(policy, task, problems, "self_consistency", samples=8, parallel=8,
                                           max_solution_tokens=160)
            finally:
                policy.shutdown()
            runs.append({"repeat": repeat, "staged": staged, "greedy_seconds": greedy_s,
                         "sampled_seconds": sampled_s, "greedy": greedy, "sampled": sampled})
            print(f"repeat {repeat} staged={staged}: greedy {greedy_s:.1f} s, self-consistency {sampled_s:.1f} s",
                  flush=True)
    median = {(staged, kind): statistics.median(r[f"{kind}_seconds"] for r in runs if r["staged"] == staged)
              for staged in (False, True) for kind in ("greedy", "sampled")}
    report = {
        "level": args.level, "problems": len(problems), "repeats": args.repeats, "model": args.model,
        "median_seconds": {f"{'staged' if s else 'unstaged'}_{k}": v for (s, k), v in median.items()},
        "greedy_speedup": median[(False, "greedy")] / median[(True, "greedy")],
        "sampled_speedup": median[(False, "sampled")] / median[(True, "sampled")],
        "same_greedy_solutions": all(r["greedy"] == runs[0]["greedy"] for r in runs),
        "runs": [{k: v for k, v in r.items() if k not in ("greedy", "sampled")} for r in runs],
    }
    print(f"greedy {report['greedy_speedup']:.2f}x faster staged, self-consistency {report['sampled_speedup']:.2f}x; "
          f"same greedy solutions: {report['same_greedy_solutions']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
