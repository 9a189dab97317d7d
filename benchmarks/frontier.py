"""The model's frontier on generated arithmetic (`task=arith`): where it is, and whether
search pays there.

    python benchmarks/frontier.py [--stages calibrate,search] [--levels bare1-10,word2-10,...]
        [--n 300] [--model smollm2] [--policy-label base] [--critic self_eval] [--critic-model DIR]
        [--budgets x1,x2,x4,x8,x16] [--search-levels L1,L2] [--shots K] [--out benchmarks/results/frontier.json]
        [--quick]
    python benchmarks/frontier.py --stages selftrain --selftrain-run DIR

- `calibrate`: per level, greedy accuracy and pass@8 / maj@8 (8 samples at the search's
  temperature, 0.7) on `--n` test problems, with 95% Wilson intervals.
- `search`: accuracy against generated tokens per problem for greedy, self-consistency
  and best-of-N (one run: its samples answered by majority vote, by the best value and by
  the critic-weighted vote), step beam
  (widths 2 and 4) and MCTS* (defaults, and its weighted vote on the same trees), on the
  test split of each level of two or more operations whose pass@8 (calibrated for this
  policy) is at least `--min-pass` (or `--search-levels`); paired differences MCTS* minus
  the best baseline at each budget, with standard errors; a PNG per level. A budget
  `xM` is M times greedy's mean generated tokens on the level's problems (rounded up to
  a multiple of 8), a plain number is tokens. Each point also gives `gold_in_tree`: the
  share of problems whose samples or tree hold a finished solution with the gold answer
  (a perfect answer selection's accuracy; the gap to the accuracy is the critic's).
  Greedy counts as a baseline at every budget (one solution fits each).
- `selftrain`: the `selftrain` section from a `treesearch selftrain` folder on the family
  (round 0 the base model; per round greedy and MCTS* on every dev split, B-STaR, data).

Every algorithm gets the same options where they share one (steps of at most 48 tokens,
solutions of at most 160: worked arithmetic lines are 5-15 tokens). The JSON accumulates:
a rerun replaces the entries of the (level, policy) pairs it measured and keeps the rest,
so the base model and each self-trained round's policy can be measured by separate runs.
`--quick` (CI) measures 6 problems of two small levels into a temporary folder unless
`--out` is given, never the committed results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import budget as budget_study  # noqa: E402  (benchmarks/budget.py: points, pairs, plots)

from treesearch import Budget, Runner  # noqa: E402
from treesearch.components import build_critic, build_policy  # noqa: E402
from treesearch.search.answer import select_answer  # noqa: E402
from treesearch.tasks import ArithTask  # noqa: E402

LEVELS = ("bare1-10", "bare1-20", "bare1-50", "bare2-10", "bare2-50", "bare3-10",
          "word1-10", "word1-20", "word1-50", "word2-10", "word2-50", "word3-10", "word3-50")
SHARED_OPTIONS = {"max_step_tokens": 48, "max_solution_tokens": 160}
SEARCHES = {  # name: (algorithm, options); beam widths 2 and 4
    "best_of_n": ("best_of_n", {"samples": 64}),
    "beam2": ("beam", {"beam_width": 2}),
    "beam4": ("beam", {"beam_width": 4}),
    "mcts": ("mcts", {}),
}
# Other answers from the same samples or trees: self-consistency is best-of-N's samples
# answered by the majority vote (the same sampling, so one run gives both).
REVOTES = {"best_of_n": (("self_consistency", "majority"), ("best_of_n_vote", "weighted")),
           "mcts": (("mcts_vote", "weighted"),)}
BASELINES = ("self_consistency", "best_of_n", "best_of_n_vote", "beam2", "beam4")
SAMPLES = 8


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # rounding can leave p a hair outside the interval at p = 0 or 1; the interval always holds p
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def rate(outcomes: list[bool]) -> dict:
    k, n = sum(outcomes), len(outcomes)
    low, high = wilson(k, n)
    return {"rate": k / n if n else 0.0, "ci95": [low, high], "correct": k}


def run(policy, critic, task, problems, algorithm: str, tokens: int, **options):
    runner = Runner(policy, critic, task, trees_in_flight=len(problems), max_batch_size=64)
    start = time.perf_counter()
    results = asyncio.run(runner.run(problems, algorithm, Budget(generated_tokens=tokens), **options))
    failed = [r.error for r in results if r.error]
    if failed:
        raise RuntimeError(f"{algorithm}: {len(failed)} searches failed, first: {failed[0]}")
    return results, time.perf_counter() - start


def arith(level: str, shots: Optional[int]) -> ArithTask:
    """The level's task, with `shots` worked examples (None: the task's default)."""
    return ArithTask(level=level) if shots is None else ArithTask(level=level, shots=shots)


def calibrate(policy, level: str, n: int, split: str, shots: Optional[int] = None) -> dict:
    """Greedy accuracy, pass@8 and maj@8 on `n` problems of a level."""
    task = arith(level, shots)
    problems = task.load(split=split, limit=task.available(split, n))  # a small level has fewer
    greedy, greedy_s = run(policy, None, task, problems, "greedy", 10_000, **SHARED_OPTIONS)
    sampled, sampled_s = run(policy, None, task, problems, "self_consistency", 10_000,
                             samples=SAMPLES, parallel=SAMPLES, **SHARED_OPTIONS)
    passed = [any(task.grade(r.tree.answer[i], r.problem.gold) for i in r.tree.terminal_nodes()) for r in sampled]
    entry = {
        "level": level, "operations": task.level.operations, "n": len(problems), "split": split,
        "shots": task.shots, "greedy": rate([bool(r.correct) for r in greedy]),
        "pass_at_8": rate(passed),
        "maj_at_8": rate([bool(r.correct) for r in sampled]),
        "greedy_tokens": sum(r.accounting.generated_tokens for r in greedy) / len(greedy),
        "seconds": {"greedy": greedy_s, "sampled": sampled_s},
    }
    print(f"{level:<9} n={len(problems)}  greedy {100 * entry['greedy']['rate']:5.1f}%  pass@8 "
          f"{100 * entry['pass_at_8']['rate']:5.1f}%  maj@8 {100 * entry['maj_at_8']['rate']:5.1f}%  "
          f"greedy tokens {entry['greedy_tokens']:.1f}  ({greedy_s:.0f} s + {sampled_s:.0f} s)", flush=True)
    return entry


def token_budgets(spec: str, greedy_tokens: float) -> list[int]:
    """Budgets from "x1,x2,128": `xM` is M times greedy's tokens, rounded up to 8."""
    budgets = []
    for item in spec.split(","):
        item = item.strip()
        if item.startswith("x"):
            budgets.append(max(8, 8 * math.ceil(float(item[1:]) * greedy_tokens / 8)))
        else:
            budgets.append(int(item))
    return sorted(set(budgets))


def search_curves(policy, critic, level: str, n: int, split: str, budgets: str, searches: list[str],
                  shots: Optional[int] = None) -> dict:
    """Accuracy per (search, budget) on `n` problems of a level; MCTS* minus the best
    baseline. `budgets`: as `token_budgets` takes them."""
    task = arith(level, shots)
    problems = task.load(split=split, limit=task.available(split, n))
    points = []
    greedy, seconds = run(policy, None, task, problems, "greedy", 10_000, **SHARED_OPTIONS)
    greedy_tokens = sum(r.accounting.generated_tokens for r in greedy) / len(greedy)
    budgets = token_budgets(budgets, greedy_tokens)
    print(f"  {level} greedy {100 * sum(bool(r.correct) for r in greedy) / len(greedy):.1f}%, "
          f"{greedy_tokens:.1f} tokens; budgets {budgets}", flush=True)
    points.append(_point("greedy", budgets[-1], greedy, seconds))
    for tokens in budgets:
        for name in searches:
            algorithm, options = SEARCHES[name]
            results, seconds = run(policy, critic, task, problems, algorithm, tokens, seed=0,
                                   **dict(SHARED_OPTIONS, **options))
            measured = [_point(name, tokens, results, seconds)]
            reached = gold_reached(task, results)  # the same trees for the votes below
            for vote_name, method in REVOTES.get(name, ()):
                answers = [select_answer(r.tree, task, method).answer for r in results]
                correct = [task.grade(a, r.problem.gold) for a, r in zip(answers, results)]
                measured.append(_point(vote_name, tokens, results, seconds, answers, correct))
            for p in measured:
                p["gold_in_tree"] = reached
                points.append(p)
                print(f"  {level} {p['algorithm']:<16} budget {tokens:>5}: accuracy {100 * p['accuracy']:5.1f}%"
                      f"  gold in tree {100 * reached:5.1f}%  tokens {p['mean_generated_tokens']:6.1f}  {seconds:5.0f} s",
                      flush=True)
    curves: dict[str, list] = {}
    for p in points:
        curves.setdefault(p["algorithm"], []).append(
            {"budget": p["budget"], "tokens": p["mean_generated_tokens"], "accuracy": p["accuracy"]})
    return {"points": points, "curves": curves, "mcts_vs_best": mcts_vs_best(points)}


def gold_reached(task, results) -> float:
    """The share of problems whose tree holds a finished solution with the gold answer
    (what a perfect answer selection would score): the gap to accuracy is selection's."""
    return sum(any(task.grade(r.tree.answer[i], r.problem.gold) for i in r.tree.terminal_nodes()
                   if r.tree.answer[i] is not None) for r in results) / len(results)


def _point(name: str, tokens: int, results, seconds: float, answers=None, correct=None) -> dict:
    """A budget-study point (`benchmarks/budget.py`); `answers` and `correct`: answers
    chosen another way from the same trees."""
    if answers is None:
        answers, correct = [r.answer for r in results], [r.correct for r in results]
    point = budget_study.describe(name, tokens, 0, correct, answers, results)
    point["seconds"] = seconds
    return point


def mcts_vs_best(points: list[dict], search: str = "mcts") -> list[dict]:
    """At each budget, MCTS* minus the most accurate baseline there, paired over problems."""
    rows = []
    for tokens in sorted({p["budget"] for p in points if p["algorithm"] == search}):
        ours = next(p for p in points if p["algorithm"] == search and p["budget"] == tokens)
        rivals = [p for p in points if p["algorithm"] in BASELINES and p["budget"] == tokens]
        rivals += [p for p in points if p["algorithm"] == "greedy"]  # one solution fits every budget
        if not rivals:
            continue
        best = max(rivals, key=lambda p: p["accuracy"])
        diffs = [int(a) - int(b) for a, b in zip(ours["correct"], best["correct"])]
        mean = sum(diffs) / len(diffs)
        se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) if len(diffs) > 1 else None
        rows.append({"budget": tokens, "best": best["algorithm"], "diff": mean, "se": se,
                     "tokens": ours["mean_generated_tokens"], "best_tokens": best["mean_generated_tokens"]})
    return rows


def _figure(metrics: Optional[dict]) -> Optional[dict]:
    """A run's accuracy with its 95% Wilson interval (None when the run was not made)."""
    if not metrics or metrics.get("graded") is None:
        return None
    low, high = wilson(int(metrics["correct"]), int(metrics["graded"]))
    return {"rate": metrics["accuracy"], "ci95": [low, high], "n": metrics["graded"],
            "tokens": metrics.get("mean_generated_tokens")}


def selftrain_section(folder: Path) -> dict:
    """The `selftrain` part of the report from a `treesearch selftrain` folder: round 0 is
    the base model (the folder's baseline), round r + 1 the policy that round r trained;
    `greedy` / `mcts` are the primary dev split's figures, `splits` every dev split's."""
    import yaml

    summary = json.loads((folder / "summary.json").read_text())
    config = yaml.safe_load((folder / "config.yaml").read_text())
    dev = dict(config.get("task") or {}, **(config.get("selftrain", {}).get("dev") or {}))

    def record(number: int, entry: dict) -> dict:
        splits = {"dev": {"greedy": _figure(entry.get("dev_greedy")), "mcts": _figure(entry.get("dev_search"))}}
        for label, extra in (entry.get("extra_dev") or {}).items():
            splits[label] = {"greedy": _figure(extra.get("dev_greedy")), "mcts": _figure(extra.get("dev_search"))}
        rate = lambda fig: fig["rate"] if fig else None  # noqa: E731
        out = {"round": number, "greedy": rate(splits["dev"]["greedy"]), "mcts": rate(splits["dev"]["mcts"]),
               "multiarith": rate((splits.get("multiarith") or {}).get("greedy")), "splits": splits}
        if entry.get("bstar"):
            out["bstar"] = entry["bstar"]
        if entry.get("data_counts"):
            out["data_counts"] = entry["data_counts"]
            out["train_search"] = {"primary": _figure(entry.get("search")),
                                   **{k: _figure(v) for k, v in (entry.get("search_extra") or {}).items()}}
            out["prm_eval_auc"] = (entry.get("prm_training") or {}).get("eval_auc")
            out["minutes"] = round(sum((entry.get("seconds") or {}).values()) / 60, 1)
        return out

    rounds = [record(0, summary.get("baseline") or {})]
    rounds += [record(r["round"] + 1, r) for r in summary.get("rounds", [])]
    return {"level": dev.get("level"), "shots": dev.get("shots"), "split": dev.get("split"),
            "folder": str(folder), "rounds": rounds}


def merged(report: dict, entries: list[dict]) -> dict:
    """`report` with `entries` replacing those of the same (level, policy)."""
    fresh = {(e["level"], e["policy"]) for e in entries}
    kept = [e for e in report.get("levels", []) if (e["level"], e["policy"]) not in fresh]
    return dict(report, levels=sorted(kept + entries, key=lambda e: (e["policy"], LEVELS.index(e["level"])
                                                                        if e["level"] in LEVELS else 99, e["level"])))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="calibrate,search")
    parser.add_argument("--levels", default=None, help=f"levels to calibrate (default: {','.join(LEVELS)})")
    parser.add_argument("--search-levels", default=None, help="levels to search (default: chosen by calibration)")
    parser.add_argument("--min-pass", type=float, default=0.2, help="pass@8 a level needs to be searched")
    parser.add_argument("--n", type=int, default=300, help="test problems per level")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default="smollm2", help="policy: a name, HF folder or hub id")
    parser.add_argument("--policy-label", default="base", help="the policy's name in the report (base, round-N)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--critic", default="self_eval")
    parser.add_argument("--critic-model", default=None, help="the critic's model (a PRM folder for --critic prm)")
    parser.add_argument("--budgets", default="x1,x2,x4,x8,x16",
                        help="tokens per problem; xM: M times greedy's tokens on the level")
    parser.add_argument("--searches", default=",".join(SEARCHES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON report (default benchmarks/results/frontier.json)")
    parser.add_argument("--shots", type=int, default=None, help="worked examples in the prompt (default: the task's)")
    parser.add_argument("--selftrain-run", default=None,
                        help="stage selftrain: a `treesearch selftrain` folder to report the rounds of")
    parser.add_argument("--quick", action="store_true", help="6 problems, 2 levels, budgets 64,128 (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.n, args.budgets = args.levels or "bare1-10,bare2-10", 6, "64,128"
        args.search_levels = args.search_levels or "bare2-10"
        args.searches = "best_of_n,beam2,mcts"
    out = Path(args.out or (Path(tempfile.mkdtemp(prefix="frontier-")) / "frontier.json" if args.quick
                            else HERE / "results" / "frontier.json"))
    args.levels = args.levels or ",".join(LEVELS)
    stages = args.stages.split(",")
    unknown = set(stages) - {"calibrate", "search", "selftrain"} or set(args.searches.split(",")) - set(SEARCHES)
    if unknown:
        parser.error(f"unknown stage or search {sorted(unknown)}")
    if "selftrain" in stages and not args.selftrain_run:
        parser.error("stage selftrain needs --selftrain-run DIR (a treesearch selftrain folder)")
    import torch

    torch.set_num_threads(args.threads)
    report = json.loads(out.read_text()) if out.exists() else {}
    if {"calibrate", "search"} & set(stages):  # the fields describe the calibrated and searched entries
        report.update(model=args.model, date=str(date.today()),
                      machine=f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if "selftrain" in stages:
        report["selftrain"] = selftrain_section(Path(args.selftrain_run))
        out.write_text(json.dumps(report, indent=2))
        for r in report["selftrain"]["rounds"]:
            print(f"  round {r['round']}: " + "  ".join(
                f"{label} {100 * fig['greedy']['rate']:.1f}%" for label, fig in r["splits"].items() if fig["greedy"]),
                flush=True)
    if not {"calibrate", "search"} & set(stages):
        print(f"wrote {out}")
        return report
    policy = build_policy({"backend": args.backend, "model": args.model, "threads": args.threads, "max_batch_size": 64})

    calibrated = {e["level"]: e for e in report.get("levels", []) if e["policy"] == args.policy_label}
    if "calibrate" in stages:
        for level in args.levels.split(","):
            entry = dict(calibrate(policy, level, args.n, args.split, args.shots), policy=args.policy_label, model=args.model)
            entry.update({k: v for k, v in calibrated.get(level, {}).items() if k in ("curves", "mcts_vs_best", "search")
                          and calibrated[level].get("n") == entry["n"]})
            calibrated[level] = entry
            report = merged(report, [entry])
            out.write_text(json.dumps(report, indent=2))
    if "search" in stages:
        chosen = (args.search_levels.split(",") if args.search_levels else
                  [lv for lv, e in calibrated.items() if e["operations"] >= 2 and e["pass_at_8"]["rate"] >= args.min_pass])
        print(f"searching levels {chosen} (pass@8 >= {args.min_pass:.0%}, two or more operations)", flush=True)
        task_for_critic = ArithTask()
        critic = build_critic({"name": args.critic, "model": args.critic_model or args.model, "threads": args.threads},
                              task_for_critic)
        for level in chosen:
            found = search_curves(policy, critic, level, args.n, args.split, args.budgets, args.searches.split(","),
                                  args.shots)
            entry = calibrated.get(level) or {"level": level, "operations": ArithTask(level=level).level.operations,
                                              "n": args.n, "policy": args.policy_label, "model": args.model}
            entry = dict(entry, curves=found["curves"], mcts_vs_best=found["mcts_vs_best"],
                         search={"critic": args.critic, "critic_model": args.critic_model or args.model,
                                 "options": SHARED_OPTIONS, "points": found["points"]})
            calibrated[level] = entry
            report = merged(report, [entry])
            out.write_text(json.dumps(report, indent=2))
            rows = budget_study.summarise(found["points"])
            budget_study.plot(rows, out.with_name(f"{out.stem}_{args.policy_label}_{level}.png"),
                              f"arith {level}, {args.n} test problems, policy {args.policy_label}, critic {args.critic}",
                              algorithms=["greedy"] + list(SEARCHES) + [v for votes in REVOTES.values() for v, _ in votes])
            for row in found["mcts_vs_best"]:
                se = f"{100 * row['se']:.1f}" if row["se"] is not None else "-"
                print(f"  {level} budget {row['budget']}: mcts - {row['best']} = {100 * row['diff']:+.1f} ± {se} points",
                      flush=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
