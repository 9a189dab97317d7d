"""JSON Lines data sets: reading rows with exact error locations, and a field-mapped task.

Every task's `load` ends here: rows come from a JSONL file (or, for `HubTask`, a
Hugging Face dataset), a field mapping turns each row into a `Problem`, and a bad row
stops the load with a `DataError` naming the file, the line and the field — or, with
`skip_bad_rows=True`, is skipped and recorded in `task.bad_rows`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Union

from treesearch.tasks.base import DEFAULT_INSTRUCTION, Task
from treesearch.tasks.grading import grade_latex, last_boxed, parse_number
from treesearch.types import Problem

logger = logging.getLogger(__name__)

LATEX_INSTRUCTION = (
    "Solve the problem step by step. Separate the steps with a blank line. "
    "Put the final answer in \\boxed{}."
)


MAX_QUESTION_CHARS = 100_000
"""A longer question is a bad row: about 25k tokens, past the context of the models served."""


class DataError(ValueError):
    """A data set cannot be read: says where (file, line, field) and why."""

    def __init__(
        self,
        source: Union[str, Path],
        line: Optional[int],
        field: Optional[str],
        reason: str,
        unit: str = "line",
    ):
        self.source, self.line, self.field, self.reason = str(source), line, field, reason
        where = self.source
        if line is not None:
            where += f", {unit} {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {reason}")


class BadRow(NamedTuple):
    """A row skipped under `skip_bad_rows=True`: its line (or row) number and the error."""

    line: int
    reason: str


class FieldError(ValueError):
    """A row's field is missing or unusable (the loader adds file and line)."""

    def __init__(self, field: Optional[str], reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"field {field!r}: {reason}")


# ----------------------------------------------------------------------------- gold answers


def value_gold(value: Any) -> str:
    """A gold answer from a field's value: numbers in their shortest form (43.0 -> '43')."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise ValueError(f"expected a number or text, got {json.dumps(value)[:40]}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value}")
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    text = str(value).strip()
    if not text:
        raise ValueError("empty")
    return text


def boxed_gold(value: Any) -> str:
    """A gold answer from a worked solution: the content of its last `\\boxed{}`."""
    if not isinstance(value, str):
        raise ValueError(f"expected a solution text, got {type(value).__name__}")
    boxed = last_boxed(value)
    if boxed is None or not boxed.strip():
        raise ValueError("no \\boxed{...} final answer in the solution")
    return boxed.strip()


GRADINGS = ("numeric", "text", "latex")  # numbers (gold must be one), normalised text, math-verify

GOLD_PARSERS: dict[str, Callable[[Any], str]] = {"value": value_gold, "boxed": boxed_gold}
"""Named gold parsers for `JSONLTask(gold_parser=...)`; tasks register their own."""


# ----------------------------------------------------------------------------- reading


_KEY_BEFORE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')


def _field_near(text: str, pos: int) -> Optional[str]:
    """The last JSON key that starts before `pos` (where a parse error happened)."""
    keys = _KEY_BEFORE.findall(text[:pos])
    return keys[-1] if keys else None


def _bad_utf8_field(row: Any) -> Optional[str]:
    """The field whose text holds undecodable bytes (decoded as lone surrogates)."""
    if isinstance(row, dict):
        for key, value in row.items():
            if re.search("[\udc80-\udcff]", str(key)):
                return str(key).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if isinstance(value, str) and re.search("[\udc80-\udcff]", value):
                return key
            if isinstance(value, (dict, list)) and _bad_utf8_field(
                value if isinstance(value, dict) else dict(enumerate(value))
            ):
                return key
    return None


def read_jsonl(path: Union[str, Path]) -> Iterator[tuple[int, Union[dict, DataError]]]:
    """Yields `(line number, row)` for each non-blank line of a JSONL file.

    A line that is not valid UTF-8, not valid JSON or not a JSON object is yielded as a
    `DataError` (so a caller can stop or skip). A missing file raises `DataError`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.is_dir():
        raise DataError(path, None, None, "is a folder, not a JSONL file")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                loose = raw.decode("utf-8", "surrogateescape")
                try:
                    field = _bad_utf8_field(json.loads(loose))
                except ValueError:
                    field = _field_near(loose, exc.start)
                reason = f"invalid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
                yield number, DataError(path, number, field, reason)
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, DataError(
                    path, number, _field_near(text, exc.pos),
                    f"malformed JSON: {exc.msg} at column {exc.colno}",
                )
                continue
            if not isinstance(row, dict):
                yield number, DataError(
                    path, number, None, f"expected a JSON object, got {type(row).__name__}"
                )
                continue
            yield number, row


# ----------------------------------------------------------------------------- the task


class JSONLTask(Task):
    """A task over a JSONL file, with a field mapping.

    `question_field` holds the question, `answer_field` the gold answer (None: no gold),
    `id_field` the row's id (when a row lacks it, the id is `<file stem>-<line>`).
    `gold_parser` turns the answer field's value into the gold string: a callable or a
    name in `GOLD_PARSERS` ("value": as written, numbers shortest, 43.0 -> "43";
    "boxed": the last \\boxed{} of a solution; "gsm8k": the number after '####').
    `grading` is "numeric" (word problems: the gold must be a number), "text" (normalised
    text, e.g. yes/no or a choice letter) or "latex" (math-verify).

    Example, MAWPS: `JSONLTask(path="addsub.jsonl", question_field="input", answer_field="target")`.
    """

    name = "jsonl"

    def __init__(
        self,
        path: Optional[Union[str, Path]] = None,
        question_field: str = "question",
        answer_field: Optional[str] = "answer",
        id_field: Optional[str] = None,
        gold_parser: Union[str, Callable[[Any], str]] = "value",
        grading: str = "numeric",
        instruction: Optional[str] = None,
        step_delimiter: Optional[str] = None,
    ):
        if grading not in GRADINGS:
            raise ValueError(f"grading must be one of {GRADINGS}, got {grading!r}")
        if isinstance(gold_parser, str) and gold_parser not in GOLD_PARSERS:
            raise ValueError(
                f"unknown gold_parser {gold_parser!r}; known: {sorted(GOLD_PARSERS)} or a callable"
            )
        if not question_field:
            raise ValueError("question_field must be a field name")
        if instruction is None:
            instruction = LATEX_INSTRUCTION if grading == "latex" else DEFAULT_INSTRUCTION
        super().__init__(instruction=instruction, step_delimiter=step_delimiter)
        self.path = path
        self.question_field = question_field
        self.answer_field = answer_field
        self.id_field = id_field
        self.gold_parser = gold_parser
        self.grading = grading
        self.bad_rows: list[BadRow] = []

    # -- grading

    def grade(self, pred: Optional[str], gold: Optional[str]) -> bool:
        if self.grading == "latex":
            return grade_latex(pred, gold)
        if self.grading == "text":
            return pred is not None and gold is not None and self.normalize_answer(pred) == self.normalize_answer(gold)
        return super().grade(pred, gold)

    # -- loading

    def load(
        self,
        path: Optional[Union[str, Path]] = None,
        split: str = "test",
        limit: Optional[int] = None,
        skip_bad_rows: bool = False,
    ) -> list[Problem]:
        """Problems from a JSONL file (`path`, else the task's path; a folder means
        `<folder>/<split>.jsonl`). Stops at the first bad row with a `DataError`, or
        with `skip_bad_rows` skips it and records it in `self.bad_rows`.
        """
        path = self._resolve_path(path, split)
        return self._load_rows(read_jsonl(path), str(path), path.stem, limit, skip_bad_rows)

    def _resolve_path(self, path: Optional[Union[str, Path]], split: str) -> Path:
        path = path if path is not None else self.path
        if path is None:
            raise ValueError(f"{type(self).__name__}.load needs a path to a JSONL file")
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / f"{split}.jsonl"
        return path

    def _load_rows(
        self,
        rows: Iterable[tuple[int, Union[dict, DataError]]],
        source: str,
        stem: str,
        limit: Optional[int],
        skip_bad_rows: bool,
        unit: str = "line",
    ) -> list[Problem]:
        """Problems from numbered rows; the shared end of every `load`."""
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValueError(f"limit must be None or an integer >= 0, got {limit!r}")
        self.bad_rows = []
        problems: list[Problem] = []
        first_line: dict[str, int] = {}
        self.problem_lines = first_line  # problem id -> its line (or row) number
        for number, row in rows:
            if limit is not None and len(problems) >= limit:
                break
            if isinstance(row, DataError):
                error = row
            else:
                try:
                    problem = self.row_to_problem(row, f"{stem}-{number}")
                    if problem.id in first_line:
                        first = first_line[problem.id]
                        raise FieldError(
                            self.id_field or "id",
                            f"duplicate id {problem.id!r} (first on {unit} {first})",
                        )
                except FieldError as exc:
                    error = DataError(source, number, exc.field, exc.reason, unit=unit)
                else:
                    first_line[problem.id] = number
                    problems.append(problem)
                    continue
            if not skip_bad_rows:
                raise error
            self.bad_rows.append(BadRow(number, str(error)))
        if self.bad_rows:
            first_bad = self.bad_rows[0].reason
            logger.warning(
                "%s: skipped %d bad rows (first: %s)", source, len(self.bad_rows), first_bad
            )
            if not problems:
                raise DataError(
                    source, None, None,
                    f"no usable rows ({len(self.bad_rows)} bad; first: {self.bad_rows[0].reason})",
                )
        return problems

    def row_to_problem(self, row: dict, default_id: str) -> Problem:
        """One row as a `Problem`; raises `FieldError` naming the offending field."""
        question = row.get(self.question_field)
        if self.question_field not in row:
            raise FieldError(self.question_field, f"missing (the row has: {_keys(row)})")
        if not isinstance(question, str):
            raise FieldError(self.question_field, f"expected text, got {type(question).__name__}")
        if not question.strip():
            raise FieldError(self.question_field, "empty question")
        if len(question) > MAX_QUESTION_CHARS:
            raise FieldError(self.question_field, f"{len(question):,} characters long; the limit is "
                                                  f"{MAX_QUESTION_CHARS:,} (no served model has the context for more)")
        gold = self.row_gold(row)
        problem_id = default_id
        if self.id_field is not None:
            value = row.get(self.id_field)
            if value is not None and str(value).strip():
                problem_id = str(value).strip()
        used = {self.question_field, self.id_field}
        meta = {key: value for key, value in row.items() if key not in used}
        return Problem(id=problem_id, question=question, gold=gold, meta=meta)

    def row_gold(self, row: dict) -> Optional[str]:
        """The gold answer of a row (None when the task has no answer field)."""
        if self.answer_field is None:
            return None
        if self.answer_field not in row:
            raise FieldError(self.answer_field, f"missing (the row has: {_keys(row)})")
        parser = self.gold_parser
        if isinstance(parser, str):
            parser = GOLD_PARSERS[parser]
        try:
            gold = parser(row[self.answer_field])
        except ValueError as exc:
            raise FieldError(self.answer_field, str(exc)) from None
        if self.grading == "numeric" and parse_number(gold) is None:
            raise FieldError(self.answer_field, f"gold answer {gold[:40]!r} is not a number, and this task grades "
                                                "numbers (grading='text' grades answers such as yes/no or a "
                                                "choice letter, grading='latex' mathematical expressions)")
        return gold


def _keys(row: dict) -> str:
    keys = ", ".join(repr(key) for key in list(row)[:12])
    return keys + (", ..." if len(row) > 12 else "") if keys else "no fields"
