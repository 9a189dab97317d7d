"""Selective answering (Self-Judge): answer where the chosen answer's value is high,
abstain elsewhere; accuracy against coverage from a job's result rows."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from treesearch.auc import roc_auc

COVERAGES = (1.0, 0.9, 0.75, 0.5, 0.25)


def _scored(rows: Sequence[dict]) -> list[tuple[float, bool, str]]:
    """(value, correct, id) of the graded rows whose chosen answer has a finite value,
    highest value first (ties keep the rows' order)."""
    out = []
    for r in rows:
        value, correct = r.get("value"), r.get("correct")
        if correct is None or r.get("error") or value is None or not math.isfinite(float(value)):
            continue
        out.append((float(value), bool(correct), str(r.get("id"))))
    return sorted(out, key=lambda t: -t[0])


def coverage_curve(rows: Sequence[dict], coverages: Sequence[float] = COVERAGES) -> list[dict]:
    """Accuracy on the most confident share of the graded problems, for each coverage:
    `{coverage, answered, accuracy, threshold}` (threshold: the least value answered)."""
    scored = _scored(rows)
    curve = []
    for share in coverages:
        k = max(1, math.ceil(share * len(scored))) if scored else 0
        top = scored[:k]
        curve.append({"coverage": share, "answered": k,
                      "accuracy": sum(c for _, c, _ in top) / k if k else None,
                      "threshold": top[-1][0] if top else None})
    return curve


def value_auroc(rows: Sequence[dict]) -> Optional[float]:
    """How well the chosen answers' values separate right from wrong answers (ROC AUC,
    ties half); None without both kinds."""
    scored = _scored(rows)
    auc = roc_auc([v for v, _, _ in scored], [bool(c) for _, c, _ in scored]) if scored else math.nan
    return None if math.isnan(auc) else auc


def abstentions(rows: Sequence[dict], threshold: float) -> dict:
    """Answer where the value is at least `threshold`: the abstained problem ids (a
    graded or ungraded row with a value below it, or with no value), coverage and the
    accuracy of the answered graded problems."""
    abstained = [str(r.get("id")) for r in rows if not r.get("error")
                 and (r.get("value") is None or not math.isfinite(float(r["value"])) or float(r["value"]) < threshold)]
    held = set(abstained)
    answered = [r for r in rows if not r.get("error") and str(r.get("id")) not in held]
    graded = [r for r in answered if r.get("correct") is not None]
    considered = sum(1 for r in rows if not r.get("error"))
    return {"abstain_below": threshold, "answered": len(answered), "abstained": abstained,
            "coverage": len(answered) / considered if considered else None,
            "accuracy_answered": sum(bool(r["correct"]) for r in graded) / len(graded) if graded else None}


def selective_metrics(rows: Sequence[dict], abstain_below: Optional[float] = None) -> dict:
    """The job's selective-answering figures: the coverage curve, the values' AUROC and,
    with `abstain_below`, what answering above that threshold gives."""
    out = {"curve": coverage_curve(rows), "value_auroc": value_auroc(rows), "scored": len(_scored(rows))}
    if abstain_below is not None:
        out.update(abstentions(rows, float(abstain_below)))
    return out
