"""What one search returns for one problem: its answer, its tree and its cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from treesearch.search.budget import Accounting
from treesearch.tree import Tree
from treesearch.types import Problem


@dataclass
class SearchResult:
    """What one search returns for one problem."""

    problem: Problem
    answer: Optional[str]
    correct: Optional[bool]
    algorithm: str
    answer_selection: str
    value: float
    solution: str
    tree: Tree
    accounting: Accounting
    candidates: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None

    def summary(self) -> dict[str, Any]:
        """A flat row for tables and Parquet files."""
        return {
            "id": self.problem.id,
            "answer": self.answer,
            "gold": self.problem.gold,
            "correct": self.correct,
            "algorithm": self.algorithm,
            "answer_selection": self.answer_selection,
            "value": self.value,
            "nodes": len(self.tree),
            "error": self.error,
            **self.accounting.as_dict(),
        }
