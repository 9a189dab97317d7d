"""Hugging Face datasets by name, with the same field mapping and checks as JSONL files.

`HubTask("openai/gsm8k", config="main", gold_parser="gsm8k").load(split="test")` calls
`datasets.load_dataset(name, config, split=...)`, which needs a reachable hub (or the
`datasets` cache). A local data file (.parquet, .json, .jsonl, .csv) given as the name
or as `load(path=...)` goes through the same code without any network. `datasets` is
imported only when loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from treesearch.tasks.jsonl import DataError, JSONLTask
from treesearch.types import Problem

_LOCAL_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


class HubTask(JSONLTask):
    """A task over a Hugging Face dataset (by hub name or local data file).

    Field mapping, gold parsing and grading are `JSONLTask`'s. Errors name the dataset,
    the split, the row number (from 1) and the field. Ids default to
    `<dataset name>_<split>-<row>` (`openai/gsm8k`, test, row 1 -> `gsm8k_test-1`).
    """

    name = "hub"

    def __init__(
        self,
        dataset: Optional[str] = None,
        config: Optional[str] = None,
        question_field: str = "question",
        answer_field: Optional[str] = "answer",
        id_field: Optional[str] = None,
        gold_parser: Union[str, Callable[[Any], str]] = "value",
        grading: str = "numeric",
        revision: Optional[str] = None,
        cache_dir: Optional[str] = None,
        instruction: Optional[str] = None,
        step_delimiter: Optional[str] = None,
    ):
        super().__init__(
            path=None,
            question_field=question_field,
            answer_field=answer_field,
            id_field=id_field,
            gold_parser=gold_parser,
            grading=grading,
            instruction=instruction,
            step_delimiter=step_delimiter,
        )
        self.dataset = dataset
        self.config = config
        self.revision = revision
        self.cache_dir = cache_dir

    def load(
        self,
        path: Optional[Union[str, Path]] = None,
        split: str = "test",
        limit: Optional[int] = None,
        skip_bad_rows: bool = False,
    ) -> list[Problem]:
        """Problems from `split` of the dataset (`path` overrides the task's dataset name)."""
        name = str(path) if path is not None else self.dataset
        if not name:
            raise ValueError("HubTask.load needs a dataset name or a local data file")
        local = Path(name).expanduser()
        is_local = local.suffix.lower() in _LOCAL_BUILDERS or local.exists()
        if is_local:
            if not local.is_file():
                raise DataError(local, None, None, "file not found")
            source, stem = str(local), local.stem
        else:
            config = f" ({self.config})" if self.config else ""
            source = f"dataset {name}{config} split {split}"
            stem = f"{name.rstrip('/').split('/')[-1]}_{split}"
        dataset = self._open(name, local if is_local else None, split)
        rows = self._rows(dataset, source)
        return self._load_rows(rows, source, stem, limit, skip_bad_rows, unit="row")

    def _open(self, name: str, local: Optional[Path], split: str):
        try:
            import datasets
        except ImportError as exc:  # pragma: no cover - datasets is a dependency of the train extra
            raise ImportError("HubTask needs the `datasets` package: pip install datasets") from exc
        kwargs: dict[str, Any] = {"cache_dir": self.cache_dir}
        if local is not None:
            builder = _LOCAL_BUILDERS.get(local.suffix.lower())
            if builder is None:
                known = sorted(_LOCAL_BUILDERS)
                raise DataError(local, None, None, f"unknown data file type; use one of {known}")
            files = {split: str(local)}
            return datasets.load_dataset(builder, data_files=files, split=split, **kwargs)
        return datasets.load_dataset(
            name, self.config, split=split, revision=self.revision, **kwargs
        )

    @staticmethod
    def _rows(dataset, source: str) -> Iterator[tuple[int, Union[dict, DataError]]]:
        for number, row in enumerate(dataset, 1):
            if not isinstance(row, dict):
                reason = f"expected a record, got {type(row).__name__}"
                yield number, DataError(source, number, None, reason, unit="row")
            else:
                yield number, row
