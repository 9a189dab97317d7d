"""Answer extraction, normalisation and grading shared by the tasks.

Two graders:

- numeric (`numbers_equal`, `grade_numeric`): word-problem answers such as "$1,234.50",
  "-3", "3/4", "2 1/2", "50%", "12 apples", "x = 7", "\\frac{1}{2}".
- LaTeX (`grade_latex`): MATH-style answers, compared with math-verify in a worker
  process under an outer timeout (`treesearch.tasks.math_verify_worker`). Plain numbers
  and answers equal after normalisation never reach the worker.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple, Optional

from treesearch.tasks import math_verify_worker

# ----------------------------------------------------------------------------- extraction

_ANSWER_PATTERNS = (
    re.compile(r"####\s*(.+?)\s*$", re.MULTILINE),
    re.compile(r"[Tt]he (?:final )?answer is[:\s]*\$?(.+?)\$?\s*(?:\.\s*)?$", re.MULTILINE),
)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> Optional[str]:
    """The content of the last complete `\\boxed{...}` (or `\\fbox{...}`) in `text`.

    Braces may nest to any depth. Returns None when there is no complete box.
    """
    found = None
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            char = text[i]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    found = text[start:i]
                    break
    return found


def extract_answer(text: str) -> Optional[str]:
    """The final answer stated in `text` (boxed, `#### N`, or "The answer is N"), else None.

    A box wins over the other forms; among several of one form the last one wins, so a
    solution may revise itself.
    """
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    for pattern in _ANSWER_PATTERNS:
        found = pattern.findall(text)
        if found:
            answer = found[-1].strip().rstrip(".").strip()
            if answer:
                return answer
    return None


# ----------------------------------------------------------------------------- numbers

_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUMBER = re.compile(
    r"(?P<sign>[-+])?\s*\$?\s*(?P<sign2>[-+])?\s*"
    r"(?:(?P<whole>\d+)\s+(?P<mnum>\d+)\s*/\s*(?P<mden>\d+)(?![\d.,])"  # mixed: 2 1/2
    rf"|(?P<num>{_UNSIGNED})(?:\s*/\s*(?P<den>{_UNSIGNED}))?)"
)
# What may not follow a final number: an operator and an operand ("3 + 4", "2^3"),
# another list item ("1, 2"), or more digits ("1.2.3").
_NOT_A_FINAL_NUMBER = re.compile(r"\d|\s*(?:(?:\*\*|[-+*/^×÷·])\s*[\d(.]|,\s*[-\d]|\.\d)")
_PERCENT = re.compile(r"\s*(?:%|percent\b|per cent\b)", re.IGNORECASE)
_TEXT_MACRO = re.compile(
    r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"
)
_NUMERIC_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?[\d.,]+)\s*\}\s*\{\s*([-+]?[\d.,]+)\s*\}")
_SHORT_FRAC = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_SPACING = re.compile(r"\\[,;: ]|\\q?quad\b|~")


class _Number(NamedTuple):
    value: float
    percent: bool
    prefix: str  # text before the number
    rest: str  # text after the number (and after a percent sign)


def _strip_decorations(text: str) -> str:
    """Plain text from an answer: unboxed, no math delimiters, units' LaTeX unwrapped,
    numeric `\\frac{a}{b}` as `a/b`. Other LaTeX commands are left in place."""
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    text = text.replace("\\$", "$").replace("\\%", "%").replace("{,}", ",").replace("\\!", "")
    text = text.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    text = text.replace("\\(", " ").replace("\\)", " ").replace("\\[", " ").replace("\\]", " ")
    text = text.replace("−", "-").replace("–", "-")  # unicode minus, en dash
    text = _SPACING.sub(" ", text)
    text = _DEGREES.sub("", text)
    for _ in range(3):  # nested \text{\textbf{..}}
        text = _TEXT_MACRO.sub(r" \1 ", text)
    text = _NUMERIC_FRAC.sub(r"(\1)/(\2)", text)
    text = _SHORT_FRAC.sub(r"\1/\2", text)
    # "(3)/(4)" from a numeric \frac: drop the grouping parentheses again
    text = re.sub(r"\(([-+]?[\d.,]+)\)/\(([-+]?[\d.,]+)\)", r"\1/\2", text)
    return text.replace("$", " $ ").strip()


def _to_float(token: str) -> float:
    return float(token.replace(",", ""))


def _parse(text: Optional[str]) -> Optional[_Number]:
    """The final number stated in an answer string, with its surroundings; None if none."""
    if text is None:
        return None
    text = _strip_decorations(str(text))
    if "\\" in text:  # LaTeX beyond decorations (\sqrt, \pi, ...): not a plain number
        return None
    if "=" in text:  # "x = 5": the right-hand side
        text = text.rsplit("=", 1)[1]
    match = _NUMBER.search(text)
    if not match:
        return None
    rest = text[match.end():]
    if _NOT_A_FINAL_NUMBER.match(rest):
        return None
    try:
        if match.group("whole") is not None:
            den = float(match.group("mden"))
            if den == 0:
                return None
            value = float(match.group("whole")) + float(match.group("mnum")) / den
        else:
            value = _to_float(match.group("num"))
            if match.group("den") is not None:
                den = _to_float(match.group("den"))
                if den == 0:
                    return None
                value /= den
    except ValueError:
        return None
    if (match.group("sign") == "-") != (match.group("sign2") == "-"):
        value = -value
    percent = _PERCENT.match(rest)
    if percent:
        rest = rest[percent.end():]
    prefix = text[: match.start()].replace("$", "")
    return _Number(value, bool(percent), prefix, rest.replace("$", ""))


def parse_number(text: Optional[str]) -> Optional[float]:
    """A number from an answer string: handles '$1,234.50', '-3', '7/2', '2 1/2', '50%',
    '12 apples', 'x = 5', '\\frac{3}{4}'. None for expressions ('3 + 4') and non-numbers.

    A percent sign is dropped ('50%' -> 50.0); `numbers_equal` knows about it.
    """
    number = _parse(text)
    return None if number is None else number.value


def _is_plain_number(number: Optional[_Number]) -> bool:
    """Only a number (maybe signed, with $ or %): nothing else around it."""
    return number is not None and not number.prefix.strip() and not number.rest.strip(" .")


def plain_number(text: Optional[str]) -> Optional[float]:
    """The value of an answer that is only a number ('-3', '$1,234.50', '\\frac{3}{4}',
    '50\\%'); None when anything else is written around it ('12 apples', 'x = 5')."""
    number = _parse(text)
    return number.value if _is_plain_number(number) else None


def _candidates(number: _Number) -> tuple[float, ...]:
    return (number.value, number.value / 100) if number.percent else (number.value,)


def numbers_equal(pred: Optional[str], gold: Optional[str], rel_tol: float = 1e-6) -> bool:
    """Numeric equality with relative tolerance; False when either side has no number.

    A side written as a percentage matches either its number or its fraction
    ('50%' equals '50' and '0.5'); '0.50' equals '0.5'; '$1,234.50' equals '1234.5'.
    """
    a, b = _parse(pred), _parse(gold)
    if a is None or b is None:
        return False
    return any(
        math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-9)
        for x in _candidates(a)
        for y in _candidates(b)
    )


def normalize_latex(answer: str) -> str:
    """A canonical spelling of a LaTeX answer for exact comparison and voting."""
    text = answer.strip()
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    text = _TEXT_MACRO.sub(r"\1", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    for token in ("\\left", "\\right", "\\displaystyle", "\\!", "$"):
        text = text.replace(token, "")
    text = _DEGREES.sub("", text)
    text = _SPACING.sub("", text)
    text = re.sub(r"\s+", "", text)
    return text.rstrip(".").lower()


def normalize_answer(answer: Optional[str]) -> Optional[str]:
    """A canonical form for voting: numbers as shortest decimals, else squeezed text.

    '$1,234.50', '1234.5' and '1234.5 dollars' share a key; so do '50%' and '50'.
    """
    if answer is None:
        return None
    number = _parse(answer)
    if number is not None and not re.search(r"\d", number.prefix + number.rest):
        return format(number.value, ".10g")
    return re.sub(r"\s+", " ", answer.strip().lower())


def grade_numeric(pred: Optional[str], gold: Optional[str]) -> bool:
    """A numeric task's grade: equal numbers, or equal normalised text when not numbers."""
    if pred is None or gold is None:
        return False
    return numbers_equal(pred, gold) or normalize_answer(pred) == normalize_answer(gold)


# ----------------------------------------------------------------------------- LaTeX

def grade_latex(
    pred: Optional[str], gold: Optional[str], timeout: float = 5.0, on_timeout: Optional[bool] = False
) -> Optional[bool]:
    """True when the LaTeX answer `pred` equals `gold` mathematically (math-verify).

    Safe from any thread. Plain numbers are compared directly ('0.5' vs '\\frac{1}{2}');
    anything else is compared by math-verify in a worker process. A comparison that
    takes longer than `timeout` seconds returns `on_timeout` (False by default; None lets
    a caller record "could not grade") and its worker is replaced.
    """
    if pred is None or gold is None:
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    if not pred or not gold:
        return False
    if plain_number(pred) is not None and plain_number(gold) is not None:
        return numbers_equal(pred, gold)
    if normalize_latex(pred) == normalize_latex(gold):
        return True
    return math_verify_worker.verify(pred, gold, float(timeout), on_timeout)
