"""Answer extraction, normalisation and grading shared by the tasks."""

from __future__ import annotations

import math
import re
from typing import Optional

_NUMBER = r"[-+]?\$?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
_ANSWER_PATTERNS = (
    re.compile(r"\\boxed\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}"),
    re.compile(r"####\s*(.+?)\s*$", re.MULTILINE),
    re.compile(r"[Tt]he (?:final )?answer is[:\s]*\$?(.+?)\$?\s*(?:\.\s*)?$", re.MULTILINE),
)


def extract_answer(text: str) -> Optional[str]:
    """The final answer stated in `text` (boxed, `#### N`, or "The answer is N"), else None.

    The last occurrence wins, so a solution may revise itself.
    """
    for pattern in _ANSWER_PATTERNS:
        found = pattern.findall(text)
        if found:
            answer = found[-1].strip().rstrip(".").strip()
            if answer:
                return answer
    return None


def parse_number(text: str) -> Optional[float]:
    """A number from an answer string: handles '$1,234.50', '-3', '7/2', '12 apples'."""
    if text is None:
        return None
    match = re.search(_NUMBER, text.replace("\\$", "$"))
    if not match:
        return None
    token = match.group(0).replace("$", "").replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            return float(num) / float(den) if float(den) != 0 else None
        return float(token)
    except ValueError:
        return None


def normalize_answer(answer: Optional[str]) -> Optional[str]:
    """A canonical form for voting: numbers as shortest decimals, else squeezed text."""
    if answer is None:
        return None
    number = parse_number(answer)
    stripped = re.sub(r"[\s$]", "", answer)
    if number is not None and re.fullmatch(r"[-+]?[\d,./]+", stripped):
        return format(number, ".10g")
    return re.sub(r"\s+", " ", answer.strip().lower())


def numbers_equal(pred: Optional[str], gold: Optional[str], rel_tol: float = 1e-6) -> bool:
    """Numeric equality with relative tolerance; False when either side has no number."""
    a, b = parse_number(pred) if pred is not None else None, parse_number(gold)
    if a is None or b is None:
        return False
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
