"""Selective answering: accuracy against coverage by the chosen answers' values."""

import math

import pytest

from treesearch.jobs import compute_metrics
from treesearch.selective import abstentions, coverage_curve, selective_metrics, value_auroc

ROWS = [  # id, value, correct
    {"id": "a", "value": 0.9, "correct": True}, {"id": "b", "value": 0.8, "correct": True},
    {"id": "c", "value": 0.7, "correct": False}, {"id": "d", "value": 0.6, "correct": True},
    {"id": "e", "value": 0.2, "correct": False}, {"id": "f", "value": 0.1, "correct": False},
    {"id": "g", "value": None, "correct": False}, {"id": "h", "value": math.nan, "correct": True},
    {"id": "i", "value": 0.95, "correct": None}, {"id": "j", "value": 0.99, "correct": False, "error": "boom"},
]


def test_the_curve_answers_the_most_confident_share_first():
    curve = {p["coverage"]: p for p in coverage_curve(ROWS)}
    assert curve[1.0]["answered"] == 6 and curve[1.0]["accuracy"] == pytest.approx(3 / 6)
    assert curve[0.5] == {"coverage": 0.5, "answered": 3, "accuracy": pytest.approx(2 / 3), "threshold": 0.7}
    assert curve[0.25]["answered"] == 2 and curve[0.25]["accuracy"] == 1.0
    assert coverage_curve([]) == [{"coverage": c, "answered": 0, "accuracy": None, "threshold": None}
                                  for c in (1.0, 0.9, 0.75, 0.5, 0.25)]


def test_value_auroc_counts_pairs_ranked_right():
    # right values 0.9, 0.8, 0.6 against wrong 0.7, 0.2, 0.1: 8 of 9 pairs ranked right
    assert value_auroc(ROWS) == pytest.approx(8 / 9)
    assert value_auroc([{"id": "x", "value": 0.5, "correct": True}]) is None


def test_abstaining_below_a_threshold():
    out = abstentions(ROWS, 0.55)
    assert out["abstained"] == ["e", "f", "g", "h"]  # low values, and no value at all
    assert out["answered"] == 5 and out["coverage"] == pytest.approx(5 / 9)  # the error row is neither
    assert out["accuracy_answered"] == pytest.approx(3 / 4)  # a, b, c, d graded; i ungraded


def test_job_metrics_carry_the_selective_figures():
    metrics = compute_metrics(ROWS, abstain_below=0.55)
    assert metrics["selective"] == selective_metrics(ROWS, 0.55) and metrics["selective"]["scored"] == 6
    assert "abstain_below" not in compute_metrics(ROWS)["selective"]
