"""Batch search jobs: many problems, actor pools, a run folder that makes resume exact.

Run folder layout:

    config.yaml         the resolved job config
    manifest.json       problem ids in order + a digest of what defines the job's results
    results/<id>.json   one row per finished problem (written atomically, last)
    trees/<id>.parquet  the problem's search tree (written before its result row)
    results.parquet     all rows, in manifest order (rebuilt at the end of every run)
    metrics.json        accuracy, tokens and calls per problem, batching, time split

A problem is finished exactly when its `results/<id>.json` exists without a search error,
so a rerun of the same command skips finished problems and redoes the rest from scratch
(problems whose search failed, e.g. because a model actor stayed down, are retried;
`job.redo_errors=false` keeps their error rows).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import statistics
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from treesearch.components import build_task, load_problems, plain
from treesearch.types import Problem, SearchResult

if TYPE_CHECKING:  # pragma: no cover
    from treesearch.cluster import ModelPools

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

DIGEST_SECTIONS = ("task", "policy", "critic", "search")
BAD_INPUT = "bad input: "


def file_key(problem_id: str) -> str:
    """A file-name-safe, collision-free key for a problem id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", problem_id)[:80]
    if safe == problem_id:
        return safe
    return f"{safe}-{zlib.crc32(problem_id.encode()):08x}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def job_digest(cfg: Mapping) -> str:
    """A digest of the config sections that determine results (not where they go)."""
    spec = {k: plain(cfg.get(k)) for k in DIGEST_SECTIONS}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def default_output_dir(cfg: Mapping) -> Path:
    """`<output_root>/<task>-<algorithm>-<digest>`: the same command maps to the same folder,
    so rerunning it resumes."""
    job = plain(cfg["job"])
    name = f"{cfg['task']['name']}-{cfg['search']['algorithm']}-{job_digest(cfg)[:10]}"
    return Path(job.get("output_root", "runs")) / name


def result_row(result: SearchResult) -> dict:
    row = result.summary()
    row["solution"] = result.solution
    row["candidates"] = json.dumps(result.candidates)
    return {k: row.get(k) for k in RESULT_SCHEMA}


def error_row(problem_id: str, error: str, gold: Optional[str] = None) -> dict:
    row = {k: None for k in RESULT_SCHEMA}
    row.update(id=problem_id, error=error, gold=gold, correct=False if gold is not None else None)
    return row


class RunFolder:
    """The files of one job's run, and the rules that make resume exact."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.results = self.path / "results"
        self.trees = self.path / "trees"

    def result_path(self, problem_id: str) -> Path:
        return self.results / f"{file_key(problem_id)}.json"

    def tree_path(self, problem_id: str) -> Path:
        return self.trees / f"{file_key(problem_id)}.parquet"

    def claim(self, problem_ids: list[str], digest: str) -> None:
        """Create the manifest, or check that an existing one describes the same job."""
        manifest = self.path / "manifest.json"
        if manifest.exists():
            old = json.loads(manifest.read_text())
            if old.get("digest") != digest or old.get("problem_ids") != problem_ids:
                raise ValueError(
                    f"run folder {self.path} holds a different job (other config or problems); "
                    "choose another job.output_dir"
                )
            return
        body = {"digest": digest, "problem_ids": problem_ids, "created": time.time()}
        write_atomic(manifest, json.dumps(body, indent=1).encode())

    def finished(self, redo_errors: bool = True) -> set[str]:
        """Ids with a result row. With `redo_errors`, rows of problems whose search failed
        (e.g. a model actor stayed down) do not count, so a rerun tries them again; rows
        of bad input data always count."""
        if not self.results.is_dir():
            return set()
        done = set()
        for path in self.results.glob("*.json"):
            try:
                row = json.loads(path.read_text())
                failed = bool(row.get("error")) and not str(row["error"]).startswith(BAD_INPUT)
                if not (redo_errors and failed):
                    done.add(row["id"])
            except (ValueError, KeyError):
                continue  # a damaged row counts as unfinished and is redone
        return done

    def write_result(self, result: SearchResult, save_tree: bool = True) -> dict:
        if save_tree:
            tmp = self.tree_path(result.problem.id).with_suffix(f".{os.getpid()}.tmp")
            result.tree.save(tmp)
            os.replace(tmp, self.tree_path(result.problem.id))
        row = result_row(result)
        write_atomic(self.result_path(result.problem.id), json.dumps(row).encode())
        return row

    def write_error(self, problem_id: str, error: str) -> None:
        write_atomic(self.result_path(problem_id), json.dumps(error_row(problem_id, error)).encode())

    def rows(self, problem_ids: Iterable[str]) -> list[dict]:
        out = []
        for pid in problem_ids:
            path = self.result_path(pid)
            if path.exists():
                out.append(json.loads(path.read_text()))
        return out

    def write_table(self, rows: list[dict]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(k, pa.type_for_alias(t)) for k, t in RESULT_SCHEMA.items()])
        table = pa.Table.from_pylist(rows, schema=schema)
        path = self.path / "results.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path


def compute_metrics(rows: list[dict], stats: Optional[dict] = None) -> dict:
    """Job metrics from result rows (and this session's runner statistics)."""
    ok = [r for r in rows if not r.get("error")]
    graded = [r for r in rows if r.get("correct") is not None]

    def per_problem(key: str) -> dict:
        values = [r[key] for r in ok if r.get(key) is not None]
        if not values:
            return {"mean": None, "median": None, "total": 0}
        return {"mean": statistics.fmean(values), "median": statistics.median(values), "total": sum(values)}

    return {
        "problems": len(rows),
        "errors": len(rows) - len(ok),
        "graded": len(graded),
        "correct": sum(1 for r in graded if r["correct"]),
        "accuracy": (sum(1 for r in graded if r["correct"]) / len(graded)) if graded else None,
        "generated_tokens": per_problem("generated_tokens"),
        "policy_calls": per_problem("policy_calls"),
        "critic_calls": per_problem("critic_calls"),
        "simulations": per_problem("simulations"),
        "seconds": per_problem("seconds"),
        "last_session": stats or {},
    }


async def _search(
    cfg: Mapping, task, problems: list[Problem], folder: RunFolder, progress, pools: "ModelPools"
) -> dict:
    """Run the searches against the actor pools; write each result as it finishes."""
    from treesearch.cluster import RemoteCritic, RemotePolicy
    from treesearch.runner import Runner
    from treesearch.search.budget import Budget

    job, search = plain(cfg["job"]), plain(cfg["search"])
    await asyncio.to_thread(pools.ready)
    critic = RemoteCritic(pools.critic) if pools.critic is not None else None
    runner = Runner(
        RemotePolicy(pools.policy),
        critic,
        task,
        max_batch_size=job.get("max_batch_size", 32),
        max_wait_ms=job.get("max_wait_ms", 5),
        trees_in_flight=job.get("trees_in_flight", 16),
        policy_concurrency=pools.policy.replicas,
        critic_concurrency=pools.critic.replicas if critic is not None else 1,
    )
    budget = Budget.from_dict({k: v for k, v in search["budget"].items() if v is not None})

    def on_result(result: SearchResult) -> None:
        progress.update(folder.write_result(result, job.get("save_trees", True)))

    await runner.run(problems, search["algorithm"], budget, on_result=on_result, **search.get("options", {}))
    stats = runner.stats.as_dict()
    stats["replacements"] = {p.name: p.replacements for p in pools.pools()}
    return stats


class Progress:
    """A progress bar: problems done, accuracy so far, tokens/s, ETA."""

    def __init__(self, total: int, enabled: bool = True):
        self.started = time.perf_counter()
        self.tokens = 0
        self.correct = 0
        self.graded = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="problem", dynamic_ncols=True)

    def update(self, row: dict) -> None:
        self.tokens += row.get("generated_tokens") or 0
        if row.get("correct") is not None:
            self.graded += 1
            self.correct += bool(row["correct"])
        if self.bar is not None:
            rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
            acc = f"{self.correct / self.graded:.1%}" if self.graded else "-"
            self.bar.set_postfix_str(f"acc {acc} | {rate:.1f} tok/s")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_job(cfg: Mapping, pools: Optional["ModelPools"] = None) -> Path:
    """Run (or resume) a batch search job; return its run folder. Pass `pools` to reuse
    running actors (they are reconfigured for this job and left running); otherwise the
    job starts its own and stops them at the end."""
    from omegaconf import OmegaConf

    job = plain(cfg["job"])
    task = build_task(cfg["task"])
    problems = load_problems(task, cfg["task"])  # bad input fails here, before any model loads
    bad_rows = list(getattr(task, "bad_rows", []))
    ids = [p.id for p in problems]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate problem ids in the task data: {duplicates[:5]}")
    folder = RunFolder(Path(job["output_dir"]) if job.get("output_dir") else default_output_dir(cfg))
    folder.path.mkdir(parents=True, exist_ok=True)
    bad_ids = [bad_row_id(b) for b in bad_rows]
    folder.claim(ids + bad_ids, job_digest(cfg))
    write_atomic(folder.path / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(plain(cfg))).encode())
    if not job.get("resume", True) and folder.finished(redo_errors=False):
        raise ValueError(f"run folder {folder.path} already has results and job.resume=false")
    for bad, pid in zip(bad_rows, bad_ids):
        if not folder.result_path(pid).exists():
            folder.write_error(pid, f"{BAD_INPUT}{bad}")

    done = folder.finished(redo_errors=job.get("redo_errors", True))
    todo = [p for p in problems if p.id not in done]
    stats: dict = {}
    if todo:
        from treesearch.cluster import ModelPools

        own = pools is None
        if own:
            pools = ModelPools(cfg)
        else:
            pools.configure(cfg)
        progress = Progress(len(todo), job.get("progress", True))
        try:
            stats = asyncio.run(_search(cfg, task, todo, folder, progress, pools))
        finally:
            progress.close()
            if own:
                pools.shutdown()
    rows = folder.rows(ids + bad_ids)
    folder.write_table(rows)
    metrics = compute_metrics(rows, stats)
    metrics["resumed_skipped"] = len(problems) - len(todo)
    write_atomic(folder.path / "metrics.json", json.dumps(metrics, indent=2, default=str).encode())
    return folder.path


def bad_row_id(bad: Any) -> str:
    """The result id of an input row skipped under `skip_bad_rows` (its line number)."""
    return f"bad-line-{bad.line}"
