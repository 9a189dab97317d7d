"""Task definitions: prompts, step splitting, answer extraction and grading."""

from treesearch.tasks.base import Task

__all__ = ["Task"]
