"""Checks of reasoning steps that need no model: the arithmetic a step claims.

A solution whose final answer is right can still contain a wrong step ("3 + 4 = 8 ...
so the answer is 7"): it is right by luck. Training on it teaches the wrong step, and a
Monte Carlo value target would call that step good. `arithmetic_errors` finds the claims
of the form `expression = value` in a step whose sides disagree, and `lucky_terminals`
names the correct terminals of a tree with such a step on their path, so that harvest
can count them as not correct (`treesearch.harvest`, `reject_lucky="arithmetic"`).

Only claims it can read without doubt are checked: numbers joined by + - * / x × ÷ and
parentheses on the left (at least one operator), a number or such an expression on the
right. A claim is skipped when the text just before it continues the expression in a way
the check cannot see ("20% of 50 + 5 = 15", "2 hours * 3 + 1 = 7": a word or symbol that
multiplies). A claimed value is read at its own precision (`10 / 3 = 3.33` is right),
and one followed by `%` as either a percentage or a plain number (`3 / 4 = 75%` and
`0.75 * 100 = 75%` are both right).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Optional

from treesearch.tree import Tree

LUCKY_CHECKS = ("arithmetic", "none")
"""Harvest's `reject_lucky` values: check the steps' arithmetic, or keep every correct trace."""

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_OPERATOR = r"[-+*/x×÷−·]"
_TERM = rf"\(?\s*\$?(?:{_NUMBER})\s*\)?"
_EXPRESSION = rf"{_TERM}(?:\s*{_OPERATOR}\s*{_TERM})*"
_CLAIM = re.compile(rf"(?<![\w.,$]){_EXPRESSION}(?:\s*=\s*{_EXPRESSION})+")
# text before a claim that makes its left side part of a longer expression the check cannot read
_CONTINUES = re.compile(r"(?:[-+*/x×÷−·^%(]|\bof|\btimes|\bby|\bper)\s*$", re.IGNORECASE)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(expression: str) -> Optional[float]:
    """The value of a plain arithmetic expression, or None if it is not one."""
    text = expression.replace("$", "").replace(",", "").strip()
    text = text.replace("×", "*").replace("x", "*").replace("·", "*").replace("÷", "/").replace("−", "-")
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None

    def value(node) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError("not plain arithmetic")

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _has_operator(expression: str) -> bool:
    return re.search(rf"\d[\s$)]*{_OPERATOR}", expression) is not None


def _tolerance(side: str) -> float:
    """Half a unit in the last place of a bare number (its claimed precision); else tiny."""
    number = side.strip().strip("()$ ").replace(",", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", number):
        decimals = len(number.split(".")[1]) if "." in number else 0
        return 0.5 * 10.0 ** -decimals + 1e-9
    return 1e-9


def arithmetic_errors(text: str) -> list[str]:
    """The claims `expression = value` in `text` whose sides disagree (as written)."""
    errors = []
    for match in _CLAIM.finditer(text):
        if _CONTINUES.search(text[: match.start()]):
            continue
        sides = match.group(0).split("=")
        if not _has_operator(sides[0]):
            continue
        percent = re.match(r"\s*%", text[match.end():]) is not None
        if _wrong_chain(sides, percent):
            errors.append(match.group(0).strip())
    return errors


def _wrong_chain(sides: list[str], percent: bool = False) -> bool:
    """Whether a chain `a = b = c` claims a wrong value. Each side with an operator is
    checked against the next side: its value, or, where the next side goes on computing
    ("2 * 3 = 6 * 2 = 12"), the number that side starts with. `percent`: the last side is
    followed by `%`, so it may also be read as a hundredth."""
    last = len(sides) - 2
    for i, (left, right) in enumerate(zip(sides, sides[1:])):
        if not _has_operator(left):
            continue
        truth, claimed = _evaluate(left), _evaluate(right)
        if truth is None or claimed is None:
            return False
        if math.isclose(truth, claimed, rel_tol=1e-9, abs_tol=_tolerance(right)):
            continue
        if percent and i == last and math.isclose(100 * truth, claimed, rel_tol=1e-9, abs_tol=_tolerance(right)):
            continue
        leading = re.match(rf"\s*\(?\s*\$?({_NUMBER})", right)
        start = _evaluate(leading.group(1)) if leading and _has_operator(right) else None
        if start is None or not math.isclose(truth, start, rel_tol=1e-9, abs_tol=_tolerance(leading.group(1))):
            return True
    return False


def lucky_terminals(tree: Tree) -> list[int]:
    """Correct terminals (reward 1) with a step on their path whose arithmetic is wrong."""
    out = []
    for node in tree.terminal_nodes():
        if tree.reward[node] != 1:
            continue
        if any(arithmetic_errors(step) for step in tree.steps(int(node))):
            out.append(int(node))
    return out
