"""GSM8K: grade-school word problems with numeric answers (openai/grade-school-math).

Rows hold `question` and `answer`, a worked solution ending in `#### N`; the gold answer
is N with thousands separators removed. Both splits ship with the package (MIT licence,
`treesearch/data/LICENSE.gsm8k`), so `GSM8KTask().load()` works offline.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

from treesearch.tasks.grading import parse_number
from treesearch.tasks.jsonl import GOLD_PARSERS, JSONLTask
from treesearch.types import Problem

GSM8K_INSTRUCTION = (
    "Solve the math word problem step by step. Write one step per line. "
    "On the last line write 'The answer is N.' where N is the final number, without units."
)
SPLITS = ("train", "test")
_FINAL = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def gsm8k_gold(value: Any) -> str:
    """The gold answer of a GSM8K solution: the number after '#### ', commas stripped."""
    if not isinstance(value, str):
        raise ValueError(f"expected a solution ending in '#### N', got {type(value).__name__}")
    match = _FINAL.search(value)
    if match is None:
        raise ValueError("no '#### N' final answer in the solution")
    gold = match.group(1).replace(",", "").replace("$", "").strip()
    if parse_number(gold) is None or not re.fullmatch(r"[-+]?[\d.]+(?:/\d+)?", gold):
        raise ValueError(f"the final answer {match.group(1)!r} is not a number")
    return gold


GOLD_PARSERS["gsm8k"] = gsm8k_gold


def bundled_path(split: str) -> Path:
    """The packaged GSM8K file for `split` ('train' or 'test')."""
    if split not in SPLITS:
        raise ValueError(f"GSM8K has splits {SPLITS}, got {split!r}")
    return Path(str(resources.files("treesearch") / "data" / f"gsm8k_{split}.jsonl"))


class GSM8KTask(JSONLTask):
    """GSM8K with numeric grading; `load()` without a path reads the bundled split."""

    name = "gsm8k"

    def __init__(
        self,
        path: Optional[Union[str, Path]] = None,
        instruction: str = GSM8K_INSTRUCTION,
        step_delimiter: Optional[str] = None,
    ):
        super().__init__(
            path=path,
            question_field="question",
            answer_field="answer",
            id_field=None,
            gold_parser=gsm8k_gold,
            grading="numeric",
            instruction=instruction,
            step_delimiter=step_delimiter,
        )

    def load(
        self,
        path: Optional[Union[str, Path]] = None,
        split: str = "test",
        limit: Optional[int] = None,
        skip_bad_rows: bool = False,
    ) -> list[Problem]:
        """Problems from `path` (or the task's path); without one, the bundled `split`."""
        if path is None and self.path is None:
            path = bundled_path(split)
        return super().load(path, split=split, limit=limit, skip_bad_rows=skip_bad_rows)
