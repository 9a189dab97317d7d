"""Task definitions: prompts, step splitting, answer extraction, grading and data loading.

`make_task(name, **kwargs)` builds a registered task: "numeric" (the base `Task`),
"gsm8k", "math", "jsonl" (field-mapped JSONL files), "hub" (Hugging Face datasets) and
"arith" (generated arithmetic with a difficulty dial).
Every data-backed task has `load(path=None, split="test", limit=None, skip_bad_rows=False)`.
"""

from __future__ import annotations

from typing import Callable

from treesearch.registry import Registry
from treesearch.tasks.arith import ArithTask
from treesearch.tasks.base import Task
from treesearch.tasks.gsm8k import GSM8KTask
from treesearch.tasks.hub import HubTask
from treesearch.tasks.jsonl import BadRow, DataError, JSONLTask
from treesearch.tasks.math import MATHTask

TASKS: Registry[Task] = Registry(
    "task", {"numeric": Task, "gsm8k": GSM8KTask, "math": MATHTask, "jsonl": JSONLTask, "hub": HubTask,
             "arith": ArithTask}
)


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Makes `make_task(name, ...)` build tasks with `factory(...)`."""
    TASKS.register(name, factory)


def make_task(name: str, **kwargs) -> Task:
    """A task by registered name.

    Example: `make_task("jsonl", question_field="input", answer_field="target")`.
    """
    return TASKS.make(name, **kwargs)


__all__ = [
    "ArithTask",
    "BadRow",
    "DataError",
    "GSM8KTask",
    "HubTask",
    "JSONLTask",
    "MATHTask",
    "TASKS",
    "Task",
    "make_task",
    "register_task",
]
