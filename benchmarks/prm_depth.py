"""How well a PRM tells right steps from wrong ones at each step depth, on trees it never
trained on.

    python benchmarks/prm_depth.py RUN --prm DIR [--prm LABEL=DIR ...] [--self-eval MODEL]
        [--threads 2] [--out benchmarks/results/prm_depth.json]

RUN is a search run folder with trees on problems the PRMs did not train on (e.g.
`treesearch search task=arith task.split=dev critic=verifier ...`: the verifier leaves
each tree's outcomes decided by the gold answers, and no PRM steered the search). Every
step whose outcome is decided (`value_targets.step_outcomes`: a correct answer below it,
or decided ends and none correct) is scored by each PRM, and the report gives per PRM and
per depth (1 = the first step; depths past `--max-depth` pooled into the last):

`--self-eval MODEL` scores the same steps with the self-evaluation critic on MODEL (the
policy judging its own steps), beside the PRMs: a judge distilled from it (`harvest
--values critic`) should rank at least as well as it does.

- `auc`: the ROC AUC of the PRM's scores for right (1) against wrong (0) steps of that
  depth, pooled over trees; `steps`, `right`: how many steps and right ones it has;
- `overall`: the same over all depths, and the within-tree rankings of
  `value_targets.TargetRanking` (sibling pairs, any-depth pairs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def decided_steps(source, tree):
    """The non-root nodes of `tree` whose outcome is decided, their outcomes (1.0 right,
    0.0 wrong) and the states a critic scores them as."""
    import numpy as np

    from treesearch.types import Problem, State
    from treesearch.value_targets import step_outcomes

    outcome = step_outcomes(tree)
    nodes = [int(i) for i in np.flatnonzero(~np.isnan(outcome)) if i != 0]
    prompt = source.prompt(tree)
    # the PRM reads the prompt and the steps; a judge (self-eval) reads the question: the prompt's last user message
    question = prompt if isinstance(prompt, str) else next(
        (m["content"] for m in reversed(list(prompt)) if m.get("role") == "user"), "")
    problem = Problem(id=tree.problem_id, question=question)
    states = [State(problem=problem, prompt=prompt, steps=tuple(tree.steps(i))) for i in nodes]
    return nodes, outcome[nodes], states


def by_depth(depths, outcomes, scores, max_depth: int) -> dict:
    """AUC, steps and right steps per depth (deeper ones pooled into `max_depth`) and overall."""
    import numpy as np

    from treesearch.auc import roc_auc

    depths = np.minimum(np.asarray(depths, dtype=int), max_depth)
    outcomes, scores = np.asarray(outcomes) >= 0.5, np.asarray(scores, dtype=float)

    def figures(mask) -> dict:
        auc = roc_auc(scores[mask], outcomes[mask])
        return {"auc": None if auc != auc else auc, "steps": int(mask.sum()), "right": int(outcomes[mask].sum())}

    per_depth = {str(d): figures(depths == d) for d in sorted(set(depths.tolist()))}
    return {"by_depth": per_depth, "overall": figures(np.ones(len(depths), dtype=bool))}


def evaluate(run: Path, prms: dict[str, Path], threads: int, max_depth: int, self_eval: str | None = None) -> dict:
    """Each PRM's (and the self-eval critic's) figures on the decided steps of the run's trees."""
    import numpy as np

    from critics import make_critic
    from critics.prm import PRMCritic
    from treesearch.harvest import _Run
    from treesearch.value_targets import TargetRanking

    source = _Run(run)
    trees = list(source.trees())
    report = {"run": str(run), "trees": len(trees), "prms": {}}
    collected = [(tree, *decided_steps(source, tree)) for tree in trees]
    critics = {label: (lambda path=path: PRMCritic(str(path), threads=threads), str(path)) for label, path in prms.items()}
    if self_eval:
        critics["self_eval"] = (lambda: make_critic("self_eval", model=self_eval, threads=threads), f"self_eval:{self_eval}")
    for label, (build, path) in critics.items():
        critic = build()
        ranking = TargetRanking(label)
        depths, outcomes, scores = [], [], []
        for tree, nodes, outcome, states in collected:
            if not nodes:
                continue
            tree_scores = np.asarray(asyncio.run(critic.score(states)), dtype=float)
            full = np.full(len(tree), np.nan)
            full[nodes] = tree_scores
            ranking.add(tree, full)
            depths += [len(s.steps) for s in states]
            outcomes += outcome.tolist()
            scores += tree_scores.tolist()
        figures = by_depth(depths, outcomes, scores, max_depth) if depths else {"by_depth": {}, "overall": {}}
        figures["overall"].update(ranking.as_dict())
        report["prms"][label] = {"path": path, **figures}
        line = "  ".join(f"d{d} {f['auc']:.2f} ({f['steps']})" for d, f in figures["by_depth"].items()
                         if f["auc"] is not None)
        print(f"{label}: overall AUC {figures['overall'].get('auc')}  {line}", flush=True)
    return report


def _prm_arg(text: str) -> tuple[str, Path]:
    label, _, path = text.rpartition("=")
    return (label or Path(path).name), Path(path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a search run folder with trees")
    parser.add_argument("--prm", action="append", type=_prm_arg, required=True, metavar="[LABEL=]DIR")
    parser.add_argument("--self-eval", default=None, metavar="MODEL",
                        help="also score with the self-eval critic on MODEL (e.g. smollm2)")
    parser.add_argument("--max-depth", type=int, default=4, help="deeper steps are pooled into this depth")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "prm_depth.json")
    args = parser.parse_args(argv)
    prms = dict(args.prm)
    if len(prms) != len(args.prm):
        parser.error("two --prm share a label; give each LABEL=DIR")
    for label, path in prms.items():
        if not path.is_dir():
            parser.error(f"--prm {label}={path}: no such folder")
    report = evaluate(args.run, prms, args.threads, args.max_depth, args.self_eval)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
