"""Answer extraction, normalisation and grading shared by the tasks.

Two graders:

- numeric (`numbers_equal`, `grade_numeric`): word-problem answers such as "$1,234.50",
  "-3", "3/4", "2 1/2", "50%", "12 apples", "x = 7", "\\frac{1}{2}".
- LaTeX (`grade_latex`): MATH-style answers, compared with math-verify. math-verify
  times itself out with `signal.alarm`, which only works in a process's main thread,
  and a pathological expression can still run for minutes inside C code. So the
  comparison runs in a separate worker process (a lazily created, reused, spawn-based
  `ProcessPoolExecutor`) under an outer timeout; a worker that overruns is killed and
  the pool is recreated on the next call. Plain numbers never reach the worker.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import os
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from typing import NamedTuple, Optional

logger = logging.getLogger(__name__)

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

_STARTUP_TIMEOUT = 120.0  # seconds for a fresh worker to start and import math-verify
_pool_lock = threading.Lock()
_slot = threading.Semaphore(1)  # one comparison in flight: the timeout measures only it
_pool: Optional[ProcessPoolExecutor] = None
_pool_pid: Optional[int] = None
_pool_failure: Optional[tuple[int, str]] = None  # (pid, why): do not retry a failed start


class _PoolUnavailable(RuntimeError):
    pass


class _Overrun(Exception):
    pass


def _as_math(text: str) -> str:
    """math-verify only reads LaTeX inside delimiters: wrap bare answers in $...$."""
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return text
    return f"${text}$"


def _verify_here(pred: str, gold: str, inner_timeout: Optional[int]) -> bool:
    """math-verify's comparison in this process (`inner_timeout` uses signal.alarm)."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(_as_math(gold), parsing_timeout=inner_timeout)
        pred_parsed = parse(_as_math(pred), parsing_timeout=inner_timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=inner_timeout))
    except Exception:  # math-verify raises on timeouts and odd inputs: not equal
        return False


def _worker_init() -> None:
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    import math_verify  # noqa: F401  (import once, at start-up, not on the clock)


def _worker_ready() -> int:
    return os.getpid()


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool whose worker may be stuck in C code (shutdown alone would wait)."""
    kill = getattr(pool, "kill_workers", None)  # Python >= 3.14
    processes = list((getattr(pool, "_processes", None) or {}).values())
    if kill is not None:
        kill()
    else:
        for process in processes:
            try:
                process.kill()
            except Exception:  # already gone
                pass
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)


def _get_pool() -> ProcessPoolExecutor:
    """The shared worker pool, started (and warmed up) on first use."""
    global _pool, _pool_pid, _pool_failure
    with _pool_lock:
        if _pool is not None and _pool_pid == os.getpid():
            return _pool
        _pool = None  # none yet, or inherited through fork: never share a parent's pool
        if _pool_failure is not None and _pool_failure[0] == os.getpid():
            raise _PoolUnavailable(_pool_failure[1])
        pool = None
        try:
            pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
            )
            pool.submit(_worker_ready).result(timeout=_STARTUP_TIMEOUT)
        except Exception as exc:
            if pool is not None:
                _kill_pool(pool)
            why = (
                f"cannot start the math-verify worker process ({type(exc).__name__}: {exc}). "
                "A script that grades LaTeX answers must guard its entry point with "
                "`if __name__ == '__main__':` (worker processes are spawned)."
            )
            _pool_failure = (os.getpid(), why)
            logger.warning("%s Falling back to math-verify in the main thread.", why)
            raise _PoolUnavailable(why) from exc
        _pool, _pool_pid = pool, os.getpid()
        return pool


def _discard_pool(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    _kill_pool(pool)


def _reset_after_fork() -> None:
    """A forked child starts without the parent's pool and locks (a worker is per process)."""
    global _pool_lock, _slot, _pool, _pool_pid, _pool_failure
    _pool_lock, _slot = threading.Lock(), threading.Semaphore(1)
    if _pool is not None:
        _inherited_pools.append(_pool)  # keep a reference: never shut down a parent's pool
    _pool, _pool_pid, _pool_failure = None, None, None


_inherited_pools: list[ProcessPoolExecutor] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _shutdown_pool() -> None:
    pool = _pool
    if pool is not None and _pool_pid == os.getpid():
        _kill_pool(pool)


@lru_cache(maxsize=65536)
def _verify_cached(pred: str, gold: str, timeout: float) -> bool:
    """The worker's verdict; raises `_Overrun` (not cached) when it ran out of time."""
    inner = max(1, int(timeout / 2))  # math-verify's own alarms: let the worker give up
    with _slot:
        for attempt in range(2):
            pool = _get_pool()
            try:
                future = pool.submit(_verify_here, pred, gold, inner)
                return bool(future.result(timeout=timeout))
            except FutureTimeout:
                logger.warning(
                    "math-verify overran %.1fs on %r vs %r: graded False, worker restarted",
                    timeout, pred[:80], gold[:80],
                )
                _discard_pool(pool)
                raise _Overrun() from None
            except BrokenProcessPool:  # the worker died (e.g. out of memory): retry once
                _discard_pool(pool)
                if attempt:
                    raise _Overrun() from None
    raise _Overrun()  # pragma: no cover


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
    try:
        return _verify_cached(pred, gold, float(timeout))
    except _Overrun:
        return on_timeout
    except _PoolUnavailable:
        if threading.current_thread() is not threading.main_thread():
            raise  # math-verify's own timeouts need the main thread: nothing safe is left
        return _verify_here(pred, gold, max(1, int(timeout)))
