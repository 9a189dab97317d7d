"""Accuracy against generated-token budget: greedy, self-consistency, best-of-N
(best-valued solution), step beam and MCTS*, same policy, same critic, same problems,
each algorithm with its defaults (the Python API's, from which the CLI configs are built).

    python benchmarks/budget.py [--data ../shared/data/multiarith.jsonl] [--limit 24]
        [--budgets 128,256,512] [--seeds 0] [--critic self_eval] [--quick]

Every algorithm gets the same per-problem budget of generated tokens; each point's x is
the mean number of generated tokens it actually used (an algorithm may stop early).
Greedy is deterministic and budget-free: one point. Self-consistency is scored on
best-of-N's samples (the two draw identical solutions for a seed; only the vote
differs), so it costs no second run and the two are paired exactly; its seconds are
best-of-N's. Critic calls are not generated tokens; their count, the share of problems
that got any answer, and the wall time of each point are reported beside accuracy.
Writes a JSON report and a PNG plot (accuracy vs generated tokens, log x axis), and
answers "does MCTS* beat best-of-N, beam and self-consistency at equal tokens?" with
paired comparisons over the same problems and seeds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from treesearch import Budget, Runner
from treesearch.components import build_critic, build_policy, load_problems as load_task_problems
from treesearch.search import make_algorithm
from treesearch.search.answer import select_answer
from treesearch.tasks import make_task

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "multiarith.jsonl"
ALGORITHMS = ("greedy", "self_consistency", "best_of_n", "beam", "mcts")
# MCTS*'s trees answered by a critic-weighted vote over their terminal nodes (best-of-N's
# rule) instead of the single best-valued one: separates the search from the vote.
PLOTTED = ALGORITHMS + ("mcts_vote",)
# Each algorithm runs with its defaults; only the sample counts are set high, so that
# the token budget, not the count, is what stops the samplers.
OPTIONS = {
    "greedy": {},
    "self_consistency": {"samples": 64},
    "best_of_n": {"samples": 64},
    "beam": {},
    "mcts": {},
}


def load_problems(data: str, limit: int, offset: int = 0):
    """Problems `offset` to `offset + limit` of a MAWPS-style JSONL (`input`/`target`) or
    GSM8K (`question`/`answer`) file, told apart by its fields."""
    first = json.loads(Path(data).read_text(encoding="utf-8").splitlines()[0])
    if "question" in first:
        task = make_task("gsm8k")
    else:
        task = make_task("jsonl", question_field="input", answer_field="target")
    return task, load_task_problems(task, {"path": data, "offset": offset, "limit": limit})


def run_point(policy, critic, task, problems, algorithm: str, budget: int, seed: int) -> tuple[dict, list]:
    """One (algorithm, budget, seed) over all problems, every tree in flight at once;
    returns the point and the search results."""
    runner = Runner(policy, critic if algorithm != "greedy" else None, task,
                    trees_in_flight=len(problems), max_batch_size=64)
    options = dict(OPTIONS[algorithm], seed=seed)
    start = time.perf_counter()
    results = asyncio.run(runner.run(problems, algorithm, Budget(generated_tokens=budget), **options))
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{algorithm} budget={budget} seed={seed}: {len(errors)} searches failed, first: {errors[0]}")
    point = describe(algorithm, budget, seed, [r.correct for r in results], [r.answer for r in results], results)
    point["seconds"] = time.perf_counter() - start
    return point, results


def describe(algorithm: str, budget: int, seed: int, correct: list, answers: list, results: list) -> dict:
    return {
        "algorithm": algorithm,
        "budget": budget,
        "seed": seed,
        "correct": [bool(c) for c in correct],
        "accuracy": sum(bool(c) for c in correct) / len(correct),
        "answered": sum(a is not None for a in answers) / len(answers),
        "mean_generated_tokens": statistics.mean(r.accounting.generated_tokens for r in results),
        "mean_critic_calls": statistics.mean(r.accounting.critic_calls for r in results),
    }


def revote_point(source: dict, results: list, task, algorithm: str, method: str) -> dict:
    """A point for `algorithm` scored on `source`'s trees, answered by `method` instead:
    the same samples and tokens, a different vote."""
    choices = [select_answer(r.tree, task, method) for r in results]
    correct = [task.grade(c.answer, r.problem.gold) for c, r in zip(choices, results)]
    point = describe(algorithm, source["budget"], source["seed"], correct, [c.answer for c in choices], results)
    point["seconds"] = source["seconds"]
    if method == "majority":
        point["mean_critic_calls"] = 0  # a majority vote reads no values
    return point


def summarise(points: list[dict]) -> list[dict]:
    """Per (algorithm, budget): accuracy over all problems and seeds, with its standard error."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["algorithm"], p["budget"]), []).append(p)
    rows = []
    for (algorithm, budget), group in groups.items():
        outcomes = [c for p in group for c in p["correct"]]
        acc = sum(outcomes) / len(outcomes)
        rows.append({
            "algorithm": algorithm,
            "budget": budget,
            "seeds": len(group),
            "samples": len(outcomes),
            "accuracy": acc,
            "answered": statistics.mean(p["answered"] for p in group),
            "stderr": math.sqrt(acc * (1 - acc) / len(outcomes)),
            "mean_generated_tokens": statistics.mean(p["mean_generated_tokens"] for p in group),
            "mean_critic_calls": statistics.mean(p["mean_critic_calls"] for p in group),
            "seconds": sum(p["seconds"] for p in group),
        })
    return rows


def paired_differences(points: list[dict], baselines=("best_of_n", "beam", "self_consistency")) -> list[dict]:
    """Paired differences MCTS* - baseline per budget over the same (problem, seed) pairs,
    with the tokens each side actually spent (equal budgets, not always equal spending);
    one row per MCTS* answer rule (`mcts`: its default rule, `mcts_vote`: weighted vote)
    and baseline that both ran."""
    index = {(p["algorithm"], p["budget"], p["seed"]): p for p in points}
    rows = []
    for search in ("mcts", "mcts_vote"):
        for baseline in baselines:
            for budget in sorted({p["budget"] for p in points}):
                diffs, tokens = [], {"search": [], "baseline": []}
                for seed in sorted({p["seed"] for p in points}):
                    a, b = index.get((search, budget, seed)), index.get((baseline, budget, seed))
                    if a is not None and b is not None:
                        diffs += [int(x) - int(y) for x, y in zip(a["correct"], b["correct"])]
                        tokens["search"].append(a["mean_generated_tokens"])
                        tokens["baseline"].append(b["mean_generated_tokens"])
                if not diffs:
                    continue
                mean = statistics.mean(diffs)
                se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
                rows.append({"search": search, "baseline": baseline, "budget": budget, "pairs": len(diffs),
                             "difference": mean, "stderr": se, "search_only_correct": diffs.count(1),
                             "baseline_only_correct": diffs.count(-1),
                             "search_tokens": statistics.mean(tokens["search"]),
                             "baseline_tokens": statistics.mean(tokens["baseline"])})
    return rows


def plot(rows: list[dict], path: Path, title: str, algorithms=PLOTTED) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for algorithm in algorithms:
        pts = sorted((r for r in rows if r["algorithm"] == algorithm), key=lambda r: r["budget"])
        if not pts:
            continue
        xs = [max(r["mean_generated_tokens"], 1.0) for r in pts]
        ys = [100 * r["accuracy"] for r in pts]
        es = [100 * r["stderr"] for r in pts]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=algorithm)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem (mean, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="JSONL problems (MAWPS or GSM8K fields)")
    parser.add_argument("--limit", type=int, default=24, help="problems (N from --offset)")
    parser.add_argument("--offset", type=int, default=0, help="problems to skip first (e.g. a PRM's training slice)")
    parser.add_argument("--budgets", default="128,256,512", help="generated tokens per problem")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--model", default="smollm2", help="policy model (name, HF folder or hub id)")
    parser.add_argument("--critic", default="self_eval", help="critic for best-of-N, beam and MCTS*")
    parser.add_argument("--critic-model", default=None, help="the critic's model (default: --model; for prm: its checkpoint folder)")
    parser.add_argument("--backend", default="auto", help="policy backend: auto (OpenVINO on a CPU-only machine), hf, openvino, vllm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 problems, budgets 64,128, one seed")
    parser.add_argument("--out", default="benchmarks/results/budget.json")
    parser.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        parser.error(f"--data {args.data}: no such file (pass the path to a JSONL data set)")
    if args.quick:
        args.limit, args.budgets, args.seeds = 4, "64,128", "0"
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    algorithms = args.algorithms.split(",")
    unknown = set(algorithms) - set(ALGORITHMS)
    if unknown:
        parser.error(f"--algorithms: unknown {sorted(unknown)}; choose from {ALGORITHMS}")
    torch.set_num_threads(args.threads)

    try:
        task, problems = load_problems(args.data, args.limit, args.offset)
    except ValueError as e:  # the task's own offset/limit checks
        parser.error(f"--offset {args.offset} / --limit {args.limit}: {e}")
    policy = build_policy({"backend": args.backend, "model": args.model, "threads": args.threads, "max_batch_size": 64})
    critic = build_critic({"name": args.critic, "model": args.critic_model or args.model, "threads": args.threads}, task)
    sc_from_best_of_n = {"self_consistency", "best_of_n"} <= set(algorithms)
    started = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def report_of(points: list[dict]) -> dict:
        return {
            "date": str(date.today()),
            "machine": f"{platform.machine()}, {args.threads} torch threads, torch {torch.__version__}",
            "data": args.data,
            "problems": len(problems),
            "offset": args.offset,
            "model": args.model,
            "backend": args.backend,
            "critic": args.critic,
            "critic_model": args.critic_model or args.model,
            "options": {a: vars(make_algorithm(a, **OPTIONS[a]).config) for a in algorithms},
            "self_consistency": "majority vote over best-of-N's samples" if sc_from_best_of_n else "own run",
            "seconds": time.perf_counter() - started,
            "summary": summarise(points),
            "paired": paired_differences(points),
            "points": points,
        }

    # Budget by budget (greedy once, first), the report rewritten after each point, so a
    # long run stopped early keeps every finished budget.
    runs = [("greedy", budgets[-1], seeds[0])] if "greedy" in algorithms else []
    runs += [(algorithm, budget, seed) for budget in budgets for algorithm in algorithms for seed in seeds
             if algorithm != "greedy" and not (algorithm == "self_consistency" and sc_from_best_of_n)]
    points = []
    for algorithm, budget, seed in runs:
        point, results = run_point(policy, critic, task, problems, algorithm, budget, seed)
        measured = [point]
        if algorithm == "best_of_n" and sc_from_best_of_n:  # self-consistency: the same samples, by vote
            measured.append(revote_point(point, results, task, "self_consistency", "majority"))
        if algorithm == "mcts":
            measured.append(revote_point(point, results, task, "mcts_vote", "weighted"))
        for p in measured:
            points.append(p)
            print(f"  {p['algorithm']:<16} budget {budget:>4} seed {seed}: accuracy {100 * p['accuracy']:5.1f}%"
                  f"  answered {100 * p['answered']:5.1f}%  tokens {p['mean_generated_tokens']:6.1f}"
                  f"  critic calls {p['mean_critic_calls']:5.1f}  {p['seconds']:6.1f} s", flush=True)
        out.write_text(json.dumps(report_of(points), indent=2))
    report = report_of(points)
    rows, comparison = report["summary"], report["paired"]
    print(f"\n{'algorithm':<16} {'budget':>6} {'tokens':>7} {'accuracy':>9} {'± se':>6} {'answered':>9} {'critic':>7}")
    for r in rows:
        print(f"{r['algorithm']:<16} {r['budget']:>6} {r['mean_generated_tokens']:>7.1f} {100 * r['accuracy']:>8.1f}%"
              f" {100 * r['stderr']:>5.1f} {100 * r['answered']:>8.1f}% {r['mean_critic_calls']:>7.1f}")
    for c in comparison:
        print(f"{c['search']} - {c['baseline']} at {c['budget']} tokens: {100 * c['difference']:+.1f} points"
              f" ± {100 * c['stderr']:.1f} ({c['search_only_correct']} problems only {c['search']} solved,"
              f" {c['baseline_only_correct']} only {c['baseline']}), {c['pairs']} pairs;"
              f" tokens spent {c['search_tokens']:.0f} vs {c['baseline_tokens']:.0f}")
    out.write_text(json.dumps(report, indent=2))
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    plot(rows, png, f"{Path(args.data).name}, {len(problems)} problems x {len(seeds)} seeds, {args.model}, critic {args.critic}")
    print(f"wrote {out} and {png}")
    return report


if __name__ == "__main__":
    main()
