"""Batch search jobs: many problems, actor pools, a run folder that makes resume exact.

The run folder's layout and the rules that make resume exact: `treesearch.runfolder`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from treesearch.components import build_task, load_problems, plain
from treesearch.config import JobConfig, require_values, with_defaults
from treesearch.hosting import LocalModels, ModelHosts, cluster_kind
from treesearch.runfolder import BAD_INPUT, RunFolder, content_digest
from treesearch.search import make_algorithm
from treesearch.search.budget import Budget
from treesearch.result import SearchResult
from treesearch.types import JobStopped, Problem

log = logging.getLogger(__name__)

DIGEST_SECTIONS = ("task", "policy", "critic", "search")
JOB_SECTIONS = (*DIGEST_SECTIONS, "cluster", "job")
JOB_LOG = "job.log"
LOGGED_PACKAGES = ("treesearch", "critics")  # their records go to the run folder's job.log


# Keys added to a config section later that do not change results: left out of the digest
# at their default, so run folders written before they existed still resume.
NEUTRAL_DEFAULTS = {("critic", "trust_remote_code"): False, ("critic", "backend"): "auto", ("policy", "trust_remote_code"): False}


def job_digest(cfg: Mapping) -> str:
    """A digest of the config sections that determine results (not where they go)."""
    spec = without_neutral_defaults({k: plain(cfg.get(k)) for k in DIGEST_SECTIONS}, NEUTRAL_DEFAULTS)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def without_neutral_defaults(spec: dict, neutral: Mapping) -> dict:
    """`spec` (config sections by name) without the keys of `neutral` ({(section, key):
    default}, or {(key,): default} for a key of `spec` itself) that hold their default:
    keys added after run folders were written leave those folders' digests as they were."""
    out = dict(spec)
    for path, default in neutral.items():
        if len(path) == 1:
            if out.get(path[0], default) == default:
                out.pop(path[0], None)
            continue
        section, key = path
        if isinstance(out.get(section), dict) and out[section].get(key, default) == default:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def checked_search(search: Mapping) -> Budget:
    """A search section's budget, after refusing a bad budget or bad algorithm options
    (before any model loads)."""
    budget = Budget.parse(search.get("budget") or {}, "search.budget")
    make_algorithm(search["algorithm"], **search.get("options", {}))
    return budget


def default_output_dir(cfg: Mapping) -> Path:
    """`<output_root>/<task>-<algorithm>-<digest>`: the same command maps to the same folder,
    so rerunning it resumes."""
    job = with_defaults(JobConfig, cfg["job"])
    name = f"{cfg['task']['name']}-{cfg['search']['algorithm']}-{job_digest(cfg)[:10]}"
    return Path(job["output_root"]) / name


def compute_metrics(rows: list[dict], stats: Optional[dict] = None, abstain_below: Optional[float] = None) -> dict:
    """Job metrics from result rows (and this session's runner statistics); `selective`:
    accuracy against coverage by the chosen answers' values (`treesearch.selective`)."""
    from treesearch.selective import selective_metrics

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
        "selective": selective_metrics(rows, abstain_below),
        "last_session": stats or {},
    }


def start_models(cfg: Mapping) -> ModelHosts:
    """The models of job config `cfg`, where `cluster.kind` says."""
    if cluster_kind(cfg) == "inprocess":
        return LocalModels(cfg)
    from treesearch.cluster import ModelPools

    return ModelPools(cfg)


async def _search(
    cfg: Mapping, task, problems: list[Problem], folder: RunFolder, progress, models: ModelHosts, budget: Budget
) -> dict:
    """Run the searches against the job's models; write each result as it finishes."""
    from treesearch.runner import Runner

    job, search = with_defaults(JobConfig, cfg["job"]), plain(cfg["search"])
    await asyncio.to_thread(models.ready)
    clients = models.clients()
    runner = Runner(
        clients.policy,
        clients.critic,
        task,
        max_batch_size=job["max_batch_size"],
        max_wait_ms=job["max_wait_ms"],
        trees_in_flight=job["trees_in_flight"],
        policy_concurrency=clients.policy_concurrency,
        critic_concurrency=clients.critic_concurrency,
    )

    def on_result(result: SearchResult) -> None:
        progress.update(folder.write_result(result, job["save_trees"]))

    await runner.run(problems, search["algorithm"], budget, on_result=on_result, keep_results=False,
                     **search.get("options", {}))
    stats = runner.stats.as_dict()
    stats["replacements"] = models.replacements()
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


def run_job(cfg: Mapping, models: Optional[ModelHosts] = None) -> Path:
    """Run (or resume) a batch search job; return its run folder. The models live where
    `cluster.kind` says (Ray actor pools, or this process). Pass `models` to reuse running
    ones (they are reconfigured for this job and left running); otherwise the job starts
    its own and stops them at the end."""
    require_values(cfg, JOB_SECTIONS)  # a mandatory value left unset (`???`) is named before anything runs
    job = with_defaults(JobConfig, cfg["job"])
    cluster_kind(cfg)  # a bad kind fails here, before any model loads
    task = build_task(cfg["task"])
    problems = load_problems(task, cfg["task"])  # bad input fails here, before any model loads
    bad_rows = list(getattr(task, "bad_rows", []))
    if not problems and not bad_rows:
        where = cfg["task"].get("path") or cfg["task"].get("name")
        raise ValueError(f"task {where}: no problems to search (an empty data file, or task.offset/limit select none)")
    # bad values fail here, before any model loads
    search = plain(cfg["search"])
    budget = checked_search(search)
    ids = [p.id for p in problems]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate problem ids in the task data: {duplicates[:5]}")
    bad_ids = [bad_row_id(b) for b in bad_rows]
    shadowed = sorted(set(bad_ids) & set(ids))
    if shadowed:
        raise ValueError(
            f"problem ids {shadowed[:5]} are also the ids given to skipped bad rows (bad-line-<line>): "
            "rename those problems or fix the bad rows"
        )
    folder = RunFolder(Path(job["output_dir"]) if job.get("output_dir") else default_output_dir(cfg))
    folder.path.mkdir(parents=True, exist_ok=True)
    digest = job_digest(cfg)
    with folder.lock(), job_log(folder.path / JOB_LOG):  # one job at a time per run folder
        log.info("job started: %d problems (%d bad input rows), digest %s", len(problems), len(bad_rows),
                 digest[:10])
        folder.claim(ids + bad_ids, digest, {p.id: content_digest(p) for p in problems})
        folder.write_config(plain(cfg))
        if not job["resume"] and folder.finished(redo_errors=False):
            raise ValueError(f"run folder {folder.path} already has results and job.resume=false")
        for bad, pid in zip(bad_rows, bad_ids):
            if not folder.result_path(pid).exists():
                folder.write_error(pid, f"{BAD_INPUT}{bad}")

        done = folder.finished(redo_errors=job["redo_errors"])
        todo = [p for p in problems if p.id not in done]
        stats: dict = {}
        if todo:
            own = models is None
            if own:
                models = start_models(cfg)
            else:
                models.configure(cfg)
            progress = Progress(len(todo), job["progress"])
            stopped: Optional[JobStopped] = None
            try:
                stats = asyncio.run(_search(cfg, task, todo, folder, progress, models, budget))
            except JobStopped as err:
                stopped = err
            finally:
                progress.close()
                if own and stopped is None:  # a stopped job's cluster may be gone: nothing to stop
                    models.shutdown()
            if stopped is not None:
                kept = len(folder.finished(redo_errors=job["redo_errors"]) & set(ids))
                message = (f"{stopped}. The run folder {folder.path} keeps the {kept} of {len(ids)} problems "
                           "finished so far: rerun the same command to resume")
                log.error("job stopped: %s", message)
                raise type(stopped)(message) from stopped
        rows = folder.rows(ids + bad_ids)
        folder.write_table(rows)
        metrics = compute_metrics(rows, stats, job.get("abstain_below"))
        metrics["resumed_skipped"] = len(problems) - len(todo)
        folder.write_metrics(metrics)
        log.info("job finished: %d computed, %d skipped as done, %d errors, accuracy %s", len(todo),
                 metrics["resumed_skipped"], metrics["errors"], metrics["accuracy"])
        return folder.path


@contextlib.contextmanager
def job_log(path: Path):
    """While a job runs, the records of treesearch and critics (INFO and up) are appended
    to `path` too, with timestamps: what the job did, replaced actors, bad rows, errors."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in LOGGED_PACKAGES]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)
        handler.close()


def bad_row_id(bad: Any) -> str:
    """The result id of an input row skipped under `skip_bad_rows` (its line number)."""
    return f"bad-line-{bad.line}"
