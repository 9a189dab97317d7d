"""Answer extraction and grading: numeric word-problem answers and LaTeX answers (math-verify)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from treesearch.tasks import GSM8KTask, MATHTask, Task
from treesearch.tasks.grading import (
    extract_answer,
    grade_latex,
    grade_numeric,
    last_boxed,
    normalize_answer,
    numbers_equal,
    parse_number,
    plain_number,
)

NUMERIC_CASES = [
    # (prediction, gold, correct)
    ("18", "18", True),
    ("$18", "18", True),
    ("\\$18", "18", True),
    ("$1,234.50", "1234.5", True),
    ("1,234", "1234", True),
    ("1,000,000", "1000000", True),
    ("12 apples", "12", True),
    ("10 dollars", "10.00", True),
    ("0.50", "0.5", True),
    (".5", "0.5", True),
    ("3/4", "0.75", True),
    ("-3/4", "-0.75", True),
    ("2 1/2", "2.5", True),
    ("\\frac{1}{2}", "0.5", True),
    ("\\boxed{42}", "42", True),
    ("-3", "-3", True),
    ("−3", "-3", True),  # unicode minus
    ("-$5", "-5", True),
    ("$-5", "-5", True),
    ("50%", "50", True),
    ("50%", "0.5", True),
    ("50", "50%", True),
    ("x = 7", "7", True),
    ("3", "-3", False),
    ("17", "18", False),
    ("0.5", "50", False),
    ("3 + 4", "3", False),  # an expression is not a final number
    ("1, 2", "1", False),  # nor is a list
    ("1234.5", "1,234.51", False),
    ("none of them", "5", False),
    ("", "5", False),
    (None, "5", False),
]


@pytest.mark.parametrize("pred,gold,correct", NUMERIC_CASES)
def test_numeric_grading_table(pred, gold, correct):
    assert grade_numeric(pred, gold) is correct
    assert Task().grade(pred, gold) is correct
    assert GSM8KTask().grade(pred, gold) is correct


@pytest.mark.parametrize(
    "text,value",
    [
        ("$1,234.50", 1234.5),
        ("-3", -3.0),
        ("7/2", 3.5),
        ("12 apples", 12.0),
        ("50%", 50.0),
        ("\\dfrac{3}{4}", 0.75),
        ("1{,}000", 1000.0),
        ("90^\\circ", 90.0),
        ("\\sqrt{2}", None),
        ("3 * 4", None),
        ("no number", None),
        ("5/0", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_plain_number_rejects_surrounding_words():
    assert plain_number("$1,234.50") == 1234.5
    assert plain_number("\\frac{3}{4}") == 0.75
    assert plain_number("12 apples") is None
    assert plain_number("2x") is None


def test_normalize_answer_gives_one_voting_key_per_number():
    keys = {normalize_answer(a) for a in ("$1,234.50", "1234.5", "1,234.5 dollars", "1234.50")}
    assert keys == {"1234.5"}
    assert normalize_answer("50%") == normalize_answer("50")
    assert normalize_answer("  Paris ") == "paris"
    assert normalize_answer(None) is None


def test_numbers_equal_relative_tolerance():
    assert numbers_equal("0.3333333333", "1/3")
    assert not numbers_equal("0.33", "1/3")


@pytest.mark.parametrize(
    "text,answer",
    [
        ("so x = 2.\nThe answer is 18.", "18"),
        ("The answer is $1,234.50.", "1,234.50"),
        ("work\n#### 72", "72"),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),
        ("first \\boxed{1}, revised: \\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
        ("The answer is 3.\nNo wait. The answer is 4.", "4"),
        ("no final answer here", None),
        ("unclosed \\boxed{\\frac{1}{2}", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_last_boxed_nests_to_any_depth():
    assert last_boxed("\\boxed{a{b{c{d}}}}") == "a{b{c{d}}}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("none") is None


LATEX_CASES = [
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{1}{2}", "\\frac12", True),
    ("\\boxed{\\frac{3}{4}}", "0.75", True),
    ("-\\frac{3}{4}", "-0.75", True),
    ("\\$1,234.50", "1234.5", True),
    ("90^\\circ", "90", True),
    ("50\\%", "50", True),
    ("x=5", "5", True),
    ("\\text{Evelyn}", "Evelyn", True),
    ("(x+1)^2", "x^2+2x+1", True),  # needs math-verify
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}", True),
    ("\\frac{\\pi}{3}", "\\frac{\\pi}{2}", False),
    ("\\sqrt{2}", "1.4142", False),
    ("2x", "2", False),
    ("0.3", "\\frac{1}{3}", False),
    ("", "1", False),
    (None, "1", False),
]


@pytest.mark.parametrize("pred,gold,correct", LATEX_CASES)
def test_latex_grading_table(pred, gold, correct):
    assert grade_latex(pred, gold) is correct
    assert MATHTask().grade(pred, gold) is correct


def test_math_task_extracts_boxed_answers_and_votes_on_values():
    task = MATHTask()
    solution = "We get $x = \\frac{1}{2}$.\n\nSo the answer is $\\boxed{\\frac{1}{2}}$."
    assert task.extract_answer(solution) == "\\frac{1}{2}"
    assert task.extract_answer("The answer is $\\sqrt{2}$.") == "\\sqrt{2}"
    assert task.is_terminal("thus \\boxed{7}")
    assert not task.is_terminal("Let x be 7.")
    assert task.normalize_answer("\\frac{1}{2}") == task.normalize_answer("0.5")
    assert task.normalize_answer("\\left( 3, \\frac{\\pi}{2} \\right)") == task.normalize_answer(
        "(3, \\dfrac{\\pi}{2})"
    )


def test_pathological_latex_does_not_hang_and_the_worker_is_replaced(caplog):
    assert grade_latex("\\sqrt{12}", "2\\sqrt{3}")  # the worker is up: start-up is not timed
    caplog.set_level(logging.WARNING, logger="treesearch.tasks.grading")
    start = time.monotonic()
    # sympy would evaluate a power tower with ~10^369693099 digits; math-verify's own
    # alarm (>= 1 s) comes later than the outer 0.3 s timeout, so the worker is killed
    assert grade_latex("9^{9^{9^{9}}}", "3", timeout=0.3) is False
    assert time.monotonic() - start < 10
    assert "overran" in caplog.text
    start = time.monotonic()
    assert grade_latex("\\sqrt{18}", "3\\sqrt{2}")  # a fresh worker answers
    assert time.monotonic() - start < 60


def test_pathological_latex_within_math_verify_timeout_keeps_the_worker():
    start = time.monotonic()
    assert grade_latex("7^{7^{7^{7}}}", "2", timeout=3.0) is False
    assert time.monotonic() - start < 15


def test_latex_grading_from_other_threads():
    cases = [(p, g, c) for p, g, c in LATEX_CASES if p] * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: grade_latex(case[0], case[1]), cases))
    assert results == [c for _, _, c in cases]

    box: list[bool] = []
    thread = threading.Thread(target=lambda: box.append(grade_latex("\\sqrt{50}", "5\\sqrt{2}")))
    thread.start()
    thread.join(timeout=60)
    assert box == [True]


def test_latex_grading_from_an_event_loop_thread():
    async def main():
        return await asyncio.to_thread(MATHTask().grade, "\\frac{x^2-1}{x-1}", "x+1")

    assert asyncio.run(main()) is True
