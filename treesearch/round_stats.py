"""Self-training evaluation figures: accuracy with its standard error, paired differences
between two evaluations of the same problems, and the accuracy-by-round plot."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator, Mapping

log = logging.getLogger(__name__)

EVALUATIONS = ("dev_greedy", "dev_search")
"""The keys of a round record (and of each `extra_dev` entry) that hold dev evaluations."""


def standard_error(correct: int, graded: int) -> float:
    """The binomial standard error of an accuracy `correct / graded` (NaN without data)."""
    if graded <= 0:
        return math.nan
    p = correct / graded
    return math.sqrt(p * (1 - p) / graded)


def _graded(run: Path) -> dict[str, bool]:
    from treesearch.runfolder import RunFolder

    return {row["id"]: bool(row["correct"]) for row in RunFolder(Path(run)).table_rows()
            if row.get("correct") is not None}


def paired_difference(new_run: Path, old_run: Path) -> dict:
    """Accuracy of `new_run` minus `old_run` over the problems both graded: the mean
    difference, its standard error (of the per-problem differences) and 95% interval
    (both None with one problem), and the problems only one of them got right."""
    new, old = _graded(new_run), _graded(old_run)
    common = sorted(set(new) & set(old))
    n = len(common)
    if n == 0:
        return {"problems": 0}
    diffs = [int(new[p]) - int(old[p]) for p in common]
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else None  # None: JSON has no NaN
    return {
        "problems": n,
        "difference": mean,
        "se": se,
        "ci95": [mean - 1.96 * se, mean + 1.96 * se] if se is not None else None,
        "only_new_right": diffs.count(1),
        "only_old_right": diffs.count(-1),
    }


def evaluations(record: Mapping, primary: str) -> Iterator[tuple[str, str, dict]]:
    """(dev split label, evaluation key, its metrics) for every dev evaluation in a round
    record or the baseline: the primary split's, then each `extra_dev` split's."""
    for key in EVALUATIONS:
        if record.get(key):
            yield primary, key, record[key]
    for label, extra in (record.get("extra_dev") or {}).items():
        for key in EVALUATIONS:
            if extra.get(key):
                yield label, key, extra[key]


def add_comparisons(record: dict, primary: str, baseline: Mapping, previous: Mapping | None) -> None:
    """Add `vs_baseline` (and `vs_previous`, another round's record) paired differences
    to each of `record`'s dev evaluations that the other record evaluated too."""
    others = {name: {(lbl, k): m for lbl, k, m in evaluations(other, primary)}
              for name, other in (("vs_baseline", baseline), ("vs_previous", previous)) if other}
    for label, key, metrics in evaluations(record, primary):
        for name, by_split in others.items():
            match = by_split.get((label, key))
            if match and match.get("run") and metrics.get("run"):
                metrics[name] = paired_difference(Path(metrics["run"]), Path(match["run"]))


def plot_rounds(summary: Mapping, primary: str, path: Path) -> bool:
    """Dev accuracy by round (baseline, round 0, 1, ...) with one-standard-error bars, one
    line per dev split and evaluation; written to `path` (PNG). False when matplotlib is
    not installed (it comes with the `train` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no accuracy plot (pip install 'treesearch[train]')")
        return False
    records = [summary.get("baseline") or {}] + list(summary.get("rounds") or [])
    names = ["baseline"] + [f"round {r.get('round', i)}" for i, r in enumerate(summary.get("rounds") or [])]
    series: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    problems: dict[tuple[str, str], int] = {}
    for x, record in enumerate(records):
        for label, key, metrics in evaluations(record, primary):
            acc = metrics.get("accuracy")
            if acc is None:
                continue
            se = metrics.get("se")
            if se is None:
                se = standard_error(metrics.get("correct") or 0, metrics.get("graded") or 0)
            series.setdefault((label, key), []).append((x, 100 * acc, 100 * se))
            problems[(label, key)] = metrics.get("graded") or 0
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = {label: f"C{i}" for i, label in enumerate(sorted({label for label, _ in series}))}
    for (label, key), points in sorted(series.items()):
        xs, ys, es = zip(*points)
        greedy = key == "dev_greedy"
        ax.errorbar(xs, ys, yerr=es, capsize=3, color=colors[label], marker="o" if greedy else "s",
                    linestyle="-" if greedy else "--", alpha=1.0 if greedy else 0.7,
                    label=f"{label}, {key.removeprefix('dev_')} ({problems[(label, key)]} problems)")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("dev accuracy (%), ± 1 standard error")
    ax.set_title("Self-training: dev accuracy by round")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
