"""Which value targets train the better PRM (Monte Carlo estimates, ReST-MCTS* inferred
values, hard 0/1 outcomes, or the mc/inferred mean), judged on problems no PRM saw,
against the same ground truth.

    python benchmarks/prm_targets.py RUN [--kinds mc,inferred,hard,mixed] [--prm KIND=DIR ...]
        [--epochs 1] [--max-steps N] [--eval-fraction 0.1] [--threads 2] [--work DIR]
        [--out benchmarks/results/prm_targets.json]

RUN is a search run folder with trees (e.g. a self-training round's `search`). Each
target kind of `--kinds` is harvested from its trees; the same problems (`--eval-fraction`
of them, by problem id, seeded) are held out of every training set; a PRM is trained on
each kind with the same settings (or taken from `--prm KIND=DIR`, which must have been
trained without the held-out problems: the split is the one `train_prm` makes on the
inferred rows with seed 0, as a self-training round does). On every held-out tree each
PRM scores each step whose outcome is decided (`value_targets.step_outcomes`: a correct
answer below it, or decided ends and none correct), and the report gives, per PRM:

- `any_depth_accuracy`: the share of (right step, wrong step) pairs within a tree, any
  depths, where the right one scores higher (ties half), pooled over trees (an AUC within
  trees);
- `sibling_accuracy`: the same over pairs with the same parent (the choice a search makes);
- the same two figures for the raw targets themselves, on the held-out trees;
- `differences`: `KIND_minus_mc` for every other kind (or `mc_minus_inferred` when only
  those two run): the difference of two PRMs' figures, with a 95% interval from
  resampling the held-out trees (paired: every PRM scores the same trees);
- `training`: each trained PRM's rows, steps, seconds and held-out AUC on its own targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # benchmarks/prm_depth.py: the decided steps of a tree

from treesearch.value_targets import GOLD_SOURCES, VALUE_SOURCES

BASELINE = "mc"  # the default targets: every other kind is compared with it


def held_out_problems(inferred_rows: Path, fraction: float, seed: int = 0) -> set[str]:
    """The problems `train_prm` holds out of a run's harvested inferred rows (as in a
    self-training round: harvest, then train with `eval_fraction`, `seed`)."""
    import pyarrow.parquet as pq

    from treesearch.train.prm import split_eval

    _, held = split_eval(pq.read_table(inferred_rows).to_pylist(), fraction, seed)
    return {r["problem_id"] for r in held}


def harvested(run: Path, work: Path, kind: str) -> Path:
    from treesearch.harvest import harvest

    return harvest(run, work / f"harvest-{kind}", values=kind)["prm"]


def train(kind: str, prm_rows: Path, held: set[str], work: Path, epochs: float, threads: int,
          max_steps=None) -> tuple[Path, dict]:
    import pyarrow.parquet as pq

    from treesearch.train.prm import train_prm

    rows = pq.read_table(prm_rows).to_pylist()
    train_rows = [r for r in rows if r["problem_id"] not in held]
    eval_rows = [r for r in rows if r["problem_id"] in held]
    out = work / f"prm-{kind}"
    metrics = train_prm("smollm2", train_rows, out, epochs=epochs, threads=threads, eval_data=eval_rows or None,
                        max_steps=max_steps)
    print(f"{kind}: trained on {metrics['num_train_rows']} rows in {metrics.get('train_runtime', 0):.0f} s, "
          f"held-out AUC on its own targets {metrics.get('eval_auc')}", flush=True)
    summary = {key: metrics.get(key) for key in ("num_train_rows", "num_eval_rows", "steps", "train_runtime",
                                                  "eval_auc_before", "eval_auc")}
    return out, summary


def evaluate(run: Path, held: set[str], prms: dict[str, Path], threads: int) -> dict:
    """Rank right steps above wrong ones on the held-out trees, with each PRM and with
    each kind of raw target."""
    import numpy as np

    from critics.prm import PRMCritic
    from prm_depth import decided_steps
    from treesearch.harvest import _Run
    from treesearch.value_targets import TargetRanking

    source = _Run(run)
    trees = [t for t in source.trees() if t.problem_id in held]
    critics = {kind: PRMCritic(str(path), threads=threads) for kind, path in prms.items()}
    rankings = {f"prm_{kind}": TargetRanking(kind) for kind in critics}
    rankings.update({f"targets_{kind}": TargetRanking(kind) for kind in prms})
    per_tree: dict[str, list] = {}
    steps_scored = 0
    for tree in trees:
        for kind in prms:
            rankings[f"targets_{kind}"].add(tree)
        nodes, _, states = decided_steps(source, tree)
        if not nodes:
            continue
        steps_scored += len(states)
        for kind, critic in critics.items():
            scores = np.full(len(tree), np.nan)
            scores[nodes] = asyncio.run(critic.score(states))
            rankings[f"prm_{kind}"].add(tree, scores)
            one = TargetRanking(kind)  # this tree's pairs alone, for the bootstrap
            one.add(tree, scores)
            per_tree.setdefault(kind, []).append(one)
    report = {"held_out_trees": len(trees), "steps_scored": steps_scored,
              **{name: ranking.as_dict() for name, ranking in rankings.items()}}
    report["differences"] = differences(per_tree)
    return report


def differences(per_tree: dict[str, list]) -> dict:
    """Paired differences of the PRMs' figures: `mc_minus_inferred` when those are the
    two kinds, else `KIND_minus_mc` for every kind other than mc (none without mc)."""
    if set(per_tree) == {"mc", "inferred"}:
        return {"mc_minus_inferred": paired_bootstrap(per_tree["mc"], per_tree["inferred"])}
    if BASELINE not in per_tree:
        return {}
    return {f"{kind}_minus_{BASELINE}": paired_bootstrap(trees, per_tree[BASELINE])
            for kind, trees in per_tree.items() if kind != BASELINE}


def paired_bootstrap(first: list, second: list, resamples: int = 2000, seed: int = 0) -> dict:
    """The pooled accuracy of `first` minus `second` (per-tree `TargetRanking`s of two PRMs
    on the same trees), with a 95% interval from resampling the trees."""
    import numpy as np

    from treesearch.value_targets import TargetRanking

    rng = np.random.default_rng(seed)
    out = {}
    for kind in TargetRanking.KINDS:
        scores = np.array([[a.scores[kind], b.scores[kind]] for a, b in zip(first, second)])
        pairs = np.array([a.pairs[kind] for a in first], dtype=float)
        if pairs.sum() == 0:
            continue

        def difference(index):
            total = pairs[index].sum()
            return (scores[index, 0].sum() - scores[index, 1].sum()) / total if total else 0.0

        draws = [difference(rng.integers(0, len(pairs), len(pairs))) for _ in range(resamples)]
        out[kind] = {"difference": difference(np.arange(len(pairs))),
                     "ci95": [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--kinds", default=",".join(GOLD_SOURCES), help="target kinds to compare, comma-separated")
    parser.add_argument("--prm", action="append", default=[], help="KIND=DIR: a PRM already trained on KIND targets")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="cap each PRM's training steps")
    parser.add_argument("--eval-fraction", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", default="benchmarks/results/prm_targets.json")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    given = dict(item.split("=", 1) for item in args.prm)
    unknown = (set(kinds) | set(given)) - set(VALUE_SOURCES)
    if unknown:
        parser.error(f"--kinds/--prm: unknown target kinds {sorted(unknown)}; use {VALUE_SOURCES}")
    kinds += [k for k in given if k not in kinds]
    work = args.work or Path(tempfile.mkdtemp(prefix="treesearch-prm-targets-"))
    started = time.perf_counter()
    rows = {kind: harvested(args.run, work, kind) for kind in {*kinds, "inferred"}}
    held = held_out_problems(rows["inferred"], args.eval_fraction)
    prms, training = {}, {}
    for kind in kinds:
        if kind in given:
            prms[kind] = Path(given[kind])
        else:
            prms[kind], training[kind] = train(kind, rows[kind], held, work, args.epochs, args.threads,
                                               args.max_steps)
    report = {"command": "python benchmarks/prm_targets.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "run": str(args.run), "held_out_problems": len(held), "prms": {k: str(v) for k, v in prms.items()},
              "training": training, **evaluate(args.run, held, prms, args.threads),
              "wall_s": time.perf_counter() - started}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for name, value in report.items():
        print(f"{name}: {value}")
    return report


if __name__ == "__main__":
    main()
