"""The Task: how a problem becomes a prompt, where steps end, and how answers are graded."""

from __future__ import annotations

from typing import Optional

from treesearch.tasks.grading import extract_answer, normalize_answer, numbers_equal
from treesearch.types import Problem, Prompt

DEFAULT_INSTRUCTION = (
    "Solve the problem step by step. Write one step per line. "
    "On the last line write 'The answer is N.' where N is the final answer."
)


class Task:
    """A numeric word-problem task; subclasses change prompts, parsing or grading.

    - `step_delimiter`: the string that ends a reasoning step (kept in the step's text)
    - `prompt(problem)`: chat messages for the policy
    - `is_terminal(step_text)`: the step states a final answer
    - `extract_answer(solution)`, `normalize_answer(answer)`, `grade(pred, gold)`,
      `grade_outcome(pred, gold)` (None when the grader could not decide)
    """

    name = "numeric"
    step_delimiter = "\n"

    def __init__(self, instruction: str = DEFAULT_INSTRUCTION, step_delimiter: Optional[str] = None):
        self.instruction = instruction
        if step_delimiter is not None:
            if not step_delimiter:
                raise ValueError("Task.step_delimiter must be a non-empty string")
            self.step_delimiter = step_delimiter

    def prompt(self, problem: Problem) -> Prompt:
        return [
            {"role": "system", "content": self.instruction},
            {"role": "user", "content": problem.question},
        ]

    def is_terminal(self, step_text: str) -> bool:
        return self.extract_answer(step_text) is not None

    def extract_answer(self, solution: str) -> Optional[str]:
        return extract_answer(solution)

    def normalize_answer(self, answer: Optional[str]) -> Optional[str]:
        return normalize_answer(answer)

    def grade(self, pred: Optional[str], gold: Optional[str]) -> bool:
        if pred is None or gold is None:
            return False
        return numbers_equal(pred, gold) or self.normalize_answer(pred) == self.normalize_answer(gold)

    def grade_outcome(self, pred: Optional[str], gold: Optional[str]) -> Optional[bool]:
        """Like `grade`, but None when the grader could not decide (e.g. it timed out)."""
        return self.grade(pred, gold)

    def load(self, path=None, split: str = "test", limit=None, skip_bad_rows: bool = False) -> list[Problem]:
        """Problems from a data set; data-backed tasks ("gsm8k", "math", "jsonl", "hub")
        implement it. The plain numeric task has no data of its own."""
        raise NotImplementedError(
            f"task {self.name!r} has no data loader: use task 'jsonl' (with a path and field names), "
            "'gsm8k', 'math' or 'hub'"
        )
