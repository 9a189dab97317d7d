"""MATH (MATH-500 format): competition problems with LaTeX answers, graded by math-verify.

Rows hold `problem`, `solution`, `answer` (LaTeX), `unique_id` (and `subject`, `level`).
Rows in the original MATH format, without `answer`, take the last `\\boxed{}` of the
solution. The policy is asked to box its final answer; an answer is the content of the
last `\\boxed{...}` (braces nest), else what follows "The answer is".
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from treesearch.tasks.grading import (
    extract_answer,
    grade_latex,
    last_boxed,
    normalize_latex,
    plain_number,
)
from treesearch.tasks.jsonl import LATEX_INSTRUCTION, FieldError, JSONLTask, boxed_gold
from treesearch.types import Problem


class MATHTask(JSONLTask):
    """MATH / MATH-500: LaTeX answers in `\\boxed{}`, graded with `grade_latex`.

    Steps are separated by a blank line ("\\n\\n"), as in MATH's worked solutions.
    MATH is not bundled: `load` needs a path (for example `math500_test.jsonl`).
    """

    name = "math"
    step_delimiter = "\n\n"

    def __init__(
        self,
        path: Optional[Union[str, Path]] = None,
        instruction: str = LATEX_INSTRUCTION,
        step_delimiter: Optional[str] = None,
        timeout: float = 5.0,
    ):
        super().__init__(
            path=path,
            question_field="problem",
            answer_field="answer",
            id_field="unique_id",
            grading="latex",
            instruction=instruction,
            step_delimiter=step_delimiter,
        )
        self.timeout = timeout

    def load(
        self,
        path: Optional[Union[str, Path]] = None,
        split: str = "test",
        limit: Optional[int] = None,
        skip_bad_rows: bool = False,
    ) -> list[Problem]:
        """Problems from a MATH-format JSONL file (`path`, else the task's path)."""
        if path is None and self.path is None:
            raise ValueError(
                "MATH is not bundled with treesearch: pass the path of a JSONL file with "
                "fields problem, answer, unique_id (e.g. MATH-500's test.jsonl), or use "
                "the 'hub' task with HuggingFaceH4/MATH-500 where the hub is reachable"
            )
        return super().load(path, split=split, limit=limit, skip_bad_rows=skip_bad_rows)

    def row_gold(self, row: dict) -> Optional[str]:
        if "answer" in row:
            return super().row_gold(row)
        if "solution" in row:
            try:
                return boxed_gold(row["solution"])
            except ValueError as exc:
                raise FieldError("solution", f"no 'answer' field and {exc}") from None
        raise FieldError("answer", "missing, and no 'solution' to take a \\boxed{} answer from")

    def extract_answer(self, solution: str) -> Optional[str]:
        boxed = last_boxed(solution)
        answer = boxed if boxed is not None else extract_answer(solution)
        if answer is None:
            return None
        answer = answer.strip().strip("$").strip().rstrip(".").strip()
        return answer or None

    def is_terminal(self, step_text: str) -> bool:
        return self.extract_answer(step_text) is not None

    def normalize_answer(self, answer: Optional[str]) -> Optional[str]:
        """Voting key: plain numbers as decimals ('\\frac{1}{2}' -> '0.5'), else tidy LaTeX."""
        if answer is None:
            return None
        number = plain_number(answer)
        return format(number, ".10g") if number is not None else normalize_latex(answer)

    def grade(self, pred: Optional[str], gold: Optional[str]) -> bool:
        return bool(grade_latex(pred, gold, timeout=self.timeout))

    def grade_outcome(self, pred: Optional[str], gold: Optional[str]) -> Optional[bool]:
        return grade_latex(pred, gold, timeout=self.timeout, on_timeout=None)

