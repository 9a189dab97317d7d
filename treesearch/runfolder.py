"""The run folder of a batch search job: its layout, its atomic writes, and reading it
back. Jobs write it; the viewer, the report, harvest and self-training read it, all
through `RunFolder`.

    config.yaml         the resolved job config
    manifest.json       problem ids in order + a digest of what defines the job's results,
                        and every treesearch version (`engine_version`) that wrote to it
                        + each problem's content digest (an edited problem is redone)
    results/<id>.json   one row per finished problem (written atomically, last)
    trees/<id>.parquet  the problem's search tree (written before its result row)
    results.parquet     all rows, in manifest order (rebuilt at the end of every run)
    metrics.json        accuracy, tokens and calls per problem, batching, time split
    job.log             what each run of the job did, appended (`treesearch.jobs.job_log`)

A problem is finished exactly when its `results/<id>.json` exists without a search error,
so a rerun of the same command skips finished problems and redoes the rest from scratch
(problems whose search failed, e.g. because a model actor stayed down, are retried;
`job.redo_errors=false` keeps their error rows).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

from treesearch.result import SearchResult
from treesearch.version import engine_version

if TYPE_CHECKING:  # pragma: no cover
    from treesearch.tree import Tree
    from treesearch.types import Problem

logger = logging.getLogger(__name__)

RESULT_SCHEMA = {
    "id": "string",
    "answer": "string",
    "gold": "string",
    "correct": "bool",
    "error": "string",
    "algorithm": "string",
    "answer_selection": "string",
    "value": "float64",
    "solution": "string",
    "candidates": "string",
    "nodes": "int64",
    "generated_tokens": "int64",
    "prompt_tokens": "int64",
    "critic_tokens": "int64",
    "policy_calls": "int64",
    "critic_calls": "int64",
    "simulations": "int64",
    "seconds": "float64",
    "seconds_in_model": "float64",
    "seconds_in_engine": "float64",
}
"""Columns of results.parquet (one row per problem)."""

BAD_INPUT = "bad input: "


LAYOUT = 2  # 2: collision-free file keys (`file_key`); folders without it use `legacy_file_key`
_PLAIN_ID = re.compile(r"[A-Za-z0-9._-]{1,80}")


def file_key(problem_id: str) -> str:
    """The file name (without extension) for a problem id, one-to-one: an id of at most
    80 letters, digits, `.`, `_` or `-` is its own key; any other id becomes a readable
    prefix, `~` (which no plain id contains) and 16 hex digits of the id's SHA-256."""
    if _PLAIN_ID.fullmatch(problem_id):
        return problem_id
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", problem_id)[:60]
    return f"{readable}~{hashlib.sha256(problem_id.encode()).hexdigest()[:16]}"


def legacy_file_key(problem_id: str) -> str:
    """The keys of run folders written before `LAYOUT` 2 (not collision-free: `a b` and
    `a_b-806c5cd3` share one), kept so those folders still resume."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", problem_id)[:80]
    if safe == problem_id:
        return safe
    return f"{safe}-{zlib.crc32(problem_id.encode()):08x}"


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A scratch path beside `path` to write to; it replaces `path` in one step when the
    block ends without an error (readers see the old file or the whole new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    with replaced_atomically(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def content_digest(problem: "Problem") -> str:
    """A digest of what a problem's result depends on besides the config: its question,
    gold answer and other fields."""
    body = json.dumps({"question": problem.question, "gold": problem.gold, "meta": problem.meta},
                      sort_keys=True, default=_stable_json)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _stable_json(value: Any) -> Any:
    """JSON for values json cannot write, the same in every process (no memory addresses):
    bytes by their digest, anything else by its type name."""
    if isinstance(value, (bytes, bytearray)):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    return f"<{type(value).__name__}>"


def result_row(result: SearchResult) -> dict:
    row = result.summary()
    row["solution"] = result.solution
    row["candidates"] = json.dumps(result.candidates)
    return {k: row.get(k) for k in RESULT_SCHEMA}


def error_row(problem_id: str, error: str, gold: Optional[str] = None) -> dict:
    row = {k: None for k in RESULT_SCHEMA}
    row.update(id=problem_id, error=error, gold=gold, correct=False if gold is not None else None)
    return row


def _read_row(path: Path) -> Optional[dict]:
    """The result row in `path`, or None when there is none or it is not a JSON object
    (a damaged file: its problem counts as unfinished)."""
    try:
        row = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return row if isinstance(row, dict) else None


class FolderInUse(RuntimeError):
    """Another job holds the run folder (see `RunFolder.lock`)."""


class RunFolder:
    """The files of one job's run, and the rules that make resume exact."""

    CONFIG, MANIFEST, METRICS, TABLE = "config.yaml", "manifest.json", "metrics.json", "results.parquet"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.results = self.path / "results"
        self.trees = self.path / "trees"
        self._legacy: Optional[bool] = None  # read from the manifest on first use

    @classmethod
    def existing(cls, path: Path) -> "RunFolder":
        """A run folder that a job wrote (it has a manifest), or FileNotFoundError."""
        folder = cls(Path(path).expanduser())
        if not folder.path.is_dir():
            raise FileNotFoundError(f"run folder not found: {folder.path}")
        if not (folder.path / cls.MANIFEST).is_file():
            raise FileNotFoundError(f"{folder.path} is not a treesearch run folder (no {cls.MANIFEST})")
        return folder

    def key(self, problem_id: str) -> str:
        """The problem's file name in this folder (legacy keys for a folder whose manifest
        predates `LAYOUT` 2)."""
        if self._legacy is None:
            self._legacy = (self.path / self.MANIFEST).is_file() and "layout" not in self.manifest()
        return legacy_file_key(problem_id) if self._legacy else file_key(problem_id)

    def result_path(self, problem_id: str) -> Path:
        return self.results / f"{self.key(problem_id)}.json"

    def tree_path(self, problem_id: str) -> Path:
        return self.trees / f"{self.key(problem_id)}.parquet"

    # ------------------------------------------------------------------ reading
    def manifest(self) -> dict:
        return json.loads((self.path / self.MANIFEST).read_text())

    def config(self) -> Any:
        """The resolved job config (an OmegaConf object), or FileNotFoundError."""
        from omegaconf import OmegaConf

        path = self.path / self.CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"not a run folder: {self.path} has no {self.CONFIG}")
        return OmegaConf.load(path)

    def metrics(self) -> dict:
        return json.loads((self.path / self.METRICS).read_text())

    def table_rows(self) -> list[dict]:
        """The rows of results.parquet (every problem of the last run, in manifest order)."""
        import pyarrow.parquet as pq

        return pq.read_table(self.path / self.TABLE).to_pylist()

    def result(self, problem_id: str) -> Optional[dict]:
        """The problem's result row, or None while it is unfinished (or its file is
        damaged: it is then redone)."""
        return _read_row(self.result_path(problem_id))

    def load_tree(self, problem_id: str) -> "Tree":
        from treesearch.tree import Tree

        return Tree.load(self.tree_path(problem_id))

    def saved_trees(self) -> list["Tree"]:
        """Every tree in the folder, in file order."""
        from treesearch.tree import Tree

        return [Tree.load(p) for p in sorted(self.trees.glob("*.parquet"))]

    # ------------------------------------------------------------------ writing
    def write_config(self, cfg: Any) -> None:
        from omegaconf import OmegaConf

        write_atomic(self.path / self.CONFIG, OmegaConf.to_yaml(OmegaConf.create(cfg)).encode())

    def write_metrics(self, metrics: dict) -> None:
        write_atomic(self.path / self.METRICS, json.dumps(metrics, indent=2, default=str).encode())

    @contextlib.contextmanager
    def lock(self) -> Iterator["RunFolder"]:
        """Hold the folder for one job: a second job on it (in this or another process)
        fails at once (`FolderInUse`), naming the folder and the holder's pid and host,
        instead of computing and writing the same results twice. The lock (`flock` on
        `.lock`) goes with the process, so a killed job's lock is stale at once and the
        next job takes it over."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Linux/macOS: no locking
            yield self
            return
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "an unknown process"
                raise FolderInUse(
                    f"run folder {self.path} is in use by another job ({holder}); wait for it to finish, "
                    "or give this job another job.output_dir"
                ) from None
            except OSError as err:  # a file system without flock (some network mounts)
                logger.warning("run folder %s: cannot lock it (%s); not guarding against a second job", self.path, err)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
            handle.flush()
            yield self
        finally:
            handle.close()

    def claim(self, problem_ids: list[str], digest: str, contents: Optional[dict[str, str]] = None) -> set[str]:
        """Create the manifest, or check that an existing one describes the same job.

        `contents`: each problem's `content_digest`. A problem whose content changed since
        the manifest recorded it (an edited question or gold answer) loses its result and
        tree, so the job computes it again; its ids are returned. Folders written before
        contents were recorded trust their results and record the contents now."""
        manifest = self.path / self.MANIFEST
        contents = dict(contents or {})
        engine = engine_version()
        if not manifest.exists():
            body = {"digest": digest, "problem_ids": problem_ids, "layout": LAYOUT, "created": time.time(),
                    "contents": contents, "engines": [engine]}
            write_atomic(manifest, json.dumps(body, indent=1).encode())
            return set()
        old = self.manifest()
        if old.get("digest") != digest or old.get("problem_ids") != problem_ids:
            raise ValueError(
                f"run folder {self.path} holds a different job (other config or problems); "
                "choose another job.output_dir"
            )
        engines = list(old.get("engines") or [])
        if engine not in engines:
            if engines:  # (a folder from before engines were recorded just records this one)
                logger.warning("run folder %s was written by treesearch %s; this run uses %s, so its results may "
                               "come from both (the manifest lists every engine that wrote to it)", self.path,
                               " and ".join(engines), engine)
            old = {**old, "engines": engines + [engine]}
            write_atomic(manifest, json.dumps(old, indent=1).encode())
        recorded = old.get("contents") or {}
        changed = {pid for pid, value in contents.items() if pid in recorded and recorded[pid] != value}
        for pid in changed:
            self.forget(pid)
        if changed:
            logger.warning("run folder %s: %d problem(s) changed since their results were written (question, "
                           "gold answer or fields): computing them again: %s", self.path, len(changed),
                           sorted(changed)[:5])
        if recorded != {**recorded, **contents}:
            write_atomic(manifest, json.dumps({**old, "contents": {**recorded, **contents}}, indent=1).encode())
        return changed

    def forget(self, problem_id: str) -> None:
        """Drop a problem's result and tree (it is then unfinished)."""
        for path in (self.result_path(problem_id), self.tree_path(problem_id)):
            path.unlink(missing_ok=True)

    def finished(self, redo_errors: bool = True) -> set[str]:
        """Ids with a result row. With `redo_errors`, rows of problems whose search failed
        (e.g. a model actor stayed down) do not count, so a rerun tries them again; rows
        of bad input data always count."""
        if not self.results.is_dir():
            return set()
        done = set()
        for path in self.results.glob("*.json"):
            row = _read_row(path)
            if row is None or not isinstance(row.get("id"), str):
                continue  # a damaged row counts as unfinished and is redone
            failed = bool(row.get("error")) and not str(row["error"]).startswith(BAD_INPUT)
            if not (redo_errors and failed):
                done.add(row["id"])
        return done

    def write_result(self, result: SearchResult, save_tree: bool = True) -> dict:
        if save_tree:
            with replaced_atomically(self.tree_path(result.problem.id)) as tmp:
                result.tree.save(tmp)
        row = result_row(result)
        write_atomic(self.result_path(result.problem.id), json.dumps(row).encode())
        return row

    def write_error(self, problem_id: str, error: str) -> None:
        write_atomic(self.result_path(problem_id), json.dumps(error_row(problem_id, error)).encode())

    def rows(self, problem_ids: Iterable[str]) -> list[dict]:
        """The result rows of `problem_ids` that have one, in that order."""
        return [row for row in map(self.result, problem_ids) if row is not None]

    def write_table(self, rows: list[dict]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(k, pa.type_for_alias(t)) for k, t in RESULT_SCHEMA.items()])
        table = pa.Table.from_pylist(rows, schema=schema)
        path = self.path / self.TABLE
        with replaced_atomically(path) as tmp:
            pq.write_table(table, tmp)
        return path
