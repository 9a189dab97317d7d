"""Lucky traces: arithmetic claims in steps, and harvest counting such traces as wrong."""

from __future__ import annotations

import json

import pytest

from treesearch.harvest import harvest, load_table
from treesearch.step_checks import arithmetic_errors, lucky_terminals
from tests.test_harvest import ANSWER, sft_tree, write_run


@pytest.mark.parametrize(
    "text",
    [
        "2 + 3 = 5",
        "10 / 3 = 3.33",  # read at the claimed precision
        "$1,200 - $200 = $1,000",
        "<<48/2=24>>",  # GSM8K calculator annotations
        "2 * 3 = 6 * 2 = 12",  # a chain that goes on computing from the last value
        "(2 + 3) x 4 = 20",
        "12 × 3 = 36",
        "3.5 + 1.25 = 4.75",
        "20% of 50 + 5 = 15",  # the left side continues beyond what the check reads
        "5 hours * 3 + 2 = 17",
        "3/4 = 75% of them",  # a percentage
        "0.75 * 100 = 75%",  # or a plain number before %
        "2x + 3 = 7",  # algebra, not arithmetic
        "x = 5",
        "The answer is 8.",
    ],
)
def test_right_or_unreadable_claims_are_not_errors(text):
    assert arithmetic_errors(text) == []


@pytest.mark.parametrize(
    ("text", "claim"),
    [
        ("3 + 4 = 8, so", "3 + 4 = 8"),
        ("$1,200 - $200 = $900", "$1,200 - $200 = $900"),
        ("<<48/2=25>>", "48/2=25"),
        ("2 * 3 = 7 * 2 = 14", "2 * 3 = 7 * 2 = 14"),
        ("12 × 3 = 38", "12 × 3 = 38"),
        ("He has 5 + 3 = 8 apples. Then 8 - 2 = 5.", "8 - 2 = 5"),
        ("Total = 5 + 3 = 9", "5 + 3 = 9"),
        ("10 / 3 = 3.4", "10 / 3 = 3.4"),
        ("1/2 = 40% of the cakes", "1/2 = 40"),  # neither 0.5 nor 50
    ],
)
def test_wrong_claims_are_named(text, claim):
    assert arithmetic_errors(text) == [claim]


LUCKY_BRANCHES = [
    (["Add 2 and 3.\n", "2 + 3 = 5.\n", ANSWER], 1.0, 0.9),  # right
    (["2 + 4 = 5.\n", ANSWER], 1.0, 0.8),  # right answer, wrong step: lucky
    (["2 + 3 = 6.\n", "The answer is 6."], 0.0, 0.7),  # wrong: not a candidate either way
]


def test_lucky_terminals_are_the_correct_ones_with_a_wrong_step():
    tree = sft_tree("p", LUCKY_BRANCHES)
    (lucky,) = lucky_terminals(tree)
    assert "".join(tree.steps(lucky)).startswith("2 + 4 = 5.")


def test_harvest_counts_lucky_traces_as_wrong_unless_asked_to_keep_them(tmp_path):
    run = tmp_path / "run"
    write_run(run, [sft_tree("p", LUCKY_BRANCHES)])
    strict = harvest([run], tmp_path / "strict")
    sft = load_table(tmp_path / "strict", "sft")
    assert [m[-1]["content"] for m in sft["messages"]] == ["Add 2 and 3.\n2 + 3 = 5.\nThe answer is 5."]
    manifest = json.loads(strict["manifest"].read_text())
    assert manifest["counts"]["lucky_terminals"] == 1 and manifest["parameters"]["reject_lucky"] == "arithmetic"
    prm = {tuple(r["completions"]): r["labels"] for r in load_table(tmp_path / "strict", "prm")}
    assert prm[("2 + 4 = 5.\n", ANSWER)] == [0.0, 0.0]  # the wrong step lifts no Monte Carlo target

    harvest([run], tmp_path / "kept", reject_lucky="none")
    assert len(load_table(tmp_path / "kept", "sft")) == 2
    kept = {tuple(r["completions"]): r["labels"] for r in load_table(tmp_path / "kept", "prm")}
    assert kept[("2 + 4 = 5.\n", ANSWER)] == [1.0, 1.0]
    with pytest.raises(ValueError, match="reject_lucky must be one of"):
        harvest([run], tmp_path / "bad", reject_lucky="yes")
