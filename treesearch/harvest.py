"""Harvest: search trees -> SFT, PRM and preference datasets (Parquet, explicit features).

`harvest(runs, out)` reads job run folders (see `treesearch.jobs`) and writes

    out/sft.parquet         correct traces, top-k per problem by value (SFT_FEATURES)
    out/prm.parquet         stepwise rows with float value targets (PRM_FEATURES)
    out/preference.parquet  step-level pairs from sibling values (PREFERENCE_FEATURES)
    out/harvest.json        parameters, counts, value source and lineage (which runs)

Every row's `run` is its run folder's name (no local path in the data); `harvest.json`
maps each name to the folder's path.

Every file loads with `datasets.load_dataset("parquet", data_files=...)` and keeps its
features (list-of-message columns, float labels). A table with no rows is still written
(zero row groups: pyarrow reads it; `datasets.load_dataset` refuses empty files, so `load_table`
loads any of them, empty or not, with its features).

Value targets come from `treesearch.value_targets` (ReST-MCTS* inferred values or Monte
Carlo estimates).

Rows
----
- SFT (`SFT_FEATURES`): per problem (pooled over all runs), the root-to-terminal paths whose
  terminal has reward 1, ranked by `value` (the terminal's search value `tree.value`; where
  the search never valued it, the mean of the path's value targets), deduplicated by
  solution text, the best `top_k` kept. Conversational: `prompt` (the task's chat
  messages; a plain-text prompt becomes one user message), `completion` (one assistant
  message: the solution), and `messages` = prompt + completion. Pass either form to TRL's
  SFTTrainer (it uses `prompt`/`completion` when present; select `messages` alone for
  whole-conversation language modeling).
- PRM (`PRM_FEATURES`): one row per root-to-leaf path (leaves: terminal nodes and closed
  non-terminal leaves): `prompt` (plain text: the messages' contents joined by blank
  lines), `prompt_messages` (the chat messages, to render exactly as the PRM critic does),
  `completions` (the raw step texts, delimiters kept, as `critics.prm_model.encode_steps`
  takes them), float `labels` (the value targets of those steps), `source` ("inferred" or
  "mc"). A path is cut before its first step with a NaN target; rows that end up empty,
  repeated, or a prefix of another row of the same tree are dropped.
- Preference (`PREFERENCE_FEATURES`): for every pair of sibling steps whose targets differ
  by at least `margin` (both with at least `min_visits` visits): conversational TRL
  DPOTrainer form, `prompt` = the task's chat messages, `chosen` / `rejected` = one
  assistant message each holding the shared prefix steps + the sibling step + its
  continuation down its best-valued path (children by highest target) to a leaf. The
  prefix is in the completions, not the prompt, because TRL renders a conversational
  prompt with the generation prompt opened (a trailing assistant prefix would become a
  closed turn); the prefix's log-probabilities are identical in chosen and rejected and
  cancel in the DPO (sigmoid) loss, so the pair still compares the two steps (and their
  best continuations, which end the text where the solution ends instead of after a
  mid-solution step). `prefix`, `chosen_step`, `rejected_step` and the two values are
  kept for step-only consumers (e.g. Step-DPO formatting).
"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from treesearch.prompting import PROMPT_FORMS, without_demonstrations
from treesearch.pseudo_labels import LABEL_SOURCES, apply_label, check_label_free_critic, pseudo_label
from treesearch.schemas import HarvestConfig
from treesearch.step_checks import LUCKY_CHECKS, lucky_terminals
from treesearch.tree import Tree
from treesearch.value_targets import (
    VALUE_SOURCES,
    TargetRanking,
    inferred_values,
    mc_values,
    value_targets,
)

FILES = {"sft": "sft.parquet", "prm": "prm.parquet", "preference": "preference.parquet"}
MANIFEST = "harvest.json"

__all__ = [  # the value targets are importable from here too (they lived here before)
    "FILES", "MANIFEST", "PROMPT_FORMS", "VALUE_SOURCES", "best_continuation", "chat_messages", "features", "harvest",
    "inferred_values", "load_table", "mc_values", "preference_pairs", "prm_rows", "prompt_text", "rank_sft", "sft_candidates",
    "value_targets", "without_demonstrations",
]

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------- features
def _features():
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    messages = List(message)
    sft = Features(
        {
            "problem_id": Value("string"),
            "prompt": messages,
            "completion": messages,
            "messages": messages,
            "value": Value("float64"),
            "run": Value("string"),
            "node": Value("int32"),
        }
    )
    prm = Features(
        {
            "problem_id": Value("string"),
            "source": Value("string"),
            "prompt": Value("string"),
            "prompt_messages": messages,
            "completions": List(Value("string")),
            "labels": List(Value("float64")),
            "run": Value("string"),
        }
    )
    preference = Features(
        {
            "problem_id": Value("string"),
            "source": Value("string"),
            "prompt": messages,
            "chosen": messages,
            "rejected": messages,
            "prefix": Value("string"),
            "chosen_step": Value("string"),
            "rejected_step": Value("string"),
            "chosen_value": Value("float64"),
            "rejected_value": Value("float64"),
            "run": Value("string"),
        }
    )
    return {"sft": sft, "prm": prm, "preference": preference}


def features() -> dict:
    """The `datasets.Features` of each table: {"sft": ..., "prm": ..., "preference": ...}."""
    return _features()


def load_table(out: PathLike, name: str):
    """One harvested table as a `datasets.Dataset` with its features, also when it has no
    rows (`datasets.load_dataset("parquet", ...)` refuses an empty file: "corresponds to
    no data"). `name`: "sft", "prm" or "preference"."""
    import datasets
    import pyarrow.parquet as pq

    if name not in FILES:
        raise ValueError(f"unknown harvested table {name!r}; choose from {sorted(FILES)}")
    path = Path(out).expanduser() / FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"no harvested {name} table at {path}")
    feats = _features()[name]
    table = pq.read_table(path)
    if table.num_rows == 0:
        return datasets.Dataset.from_dict({column: [] for column in feats}, features=feats)
    return datasets.Dataset(table.cast(feats.arrow_schema))


# --------------------------------------------------------------------------- prompts
def chat_messages(prompt: Any) -> list[dict]:
    """A task prompt as chat messages `[{role, content}]` (plain text -> one user message)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    out = []
    for m in prompt:
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    if not out:
        raise ValueError("empty prompt")
    return out


def prompt_text(prompt: Any) -> str:
    """A task prompt as plain text: itself, or its messages' contents joined by blank lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(str(m["content"]) for m in prompt)


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------------------ rows
def _nan_to_none(x: float) -> Optional[float]:
    return None if x is None or math.isnan(x) else float(x)


def sft_candidates(tree: Tree, targets: np.ndarray) -> list[dict]:
    """Correct root-to-terminal traces of one tree with their ranking value (unranked)."""
    out = []
    for node in tree.terminal_nodes():
        if tree.reward[node] != 1:
            continue
        path = tree.path(int(node))
        q = float(tree.value(int(node)))
        if math.isnan(q):
            steps = targets[path[1:]]
            q = float(np.nanmean(steps)) if np.isfinite(steps).any() else math.nan
        out.append({"node": int(node), "solution": "".join(tree.steps(int(node))), "value": q, "depth": len(path) - 1})
    return out


def rank_sft(candidates: Sequence[dict], top_k: int) -> list[dict]:
    """The best `top_k` candidates by value (NaN last; then shorter, then earlier), one per
    distinct solution text (whitespace at the ends ignored)."""
    order = sorted(
        range(len(candidates)),
        key=lambda i: (
            math.isnan(candidates[i]["value"]),
            -candidates[i]["value"] if not math.isnan(candidates[i]["value"]) else 0.0,
            candidates[i]["depth"],
            i,
        ),
    )
    seen: set[str] = set()
    kept = []
    for i in order:
        key = candidates[i]["solution"].strip()
        if key in seen:
            continue
        seen.add(key)
        kept.append(candidates[i])
        if len(kept) == top_k:
            break
    return kept


def prm_rows(tree: Tree, targets: np.ndarray) -> list[dict]:
    """Stepwise rows `{completions, labels}` of one tree (see the module docstring)."""
    leaf = tree.column("num_children") == 0
    ends = np.flatnonzero(leaf & (tree.column("terminal") | tree.column("closed")))
    paths: dict[int, list[int]] = {}
    for end in ends:
        labeled = []
        for node in tree.path(int(end))[1:]:
            if math.isnan(targets[node]) or not tree.text[node].strip():
                break  # no target, or an empty step (a bare end of sequence): cut here
            labeled.append(node)
        if labeled:
            paths[labeled[-1]] = labeled  # same last node -> same row
    inner = {node for path in paths.values() for node in path[:-1]}
    rows = []
    for last in sorted(paths):
        if last in inner:
            continue  # a cut path that another row continues
        path = paths[last]
        rows.append({"completions": [tree.text[i] for i in path], "labels": [float(targets[i]) for i in path]})
    return rows


def best_continuation(tree: Tree, node: int, targets: np.ndarray) -> list[int]:
    """Nodes below `node` following, at each level, the child with the highest target
    (then the highest search value, then the lowest id) down to a leaf."""
    out = []
    kids = tree.children(node)
    while len(kids):
        t = np.nan_to_num(targets[kids], nan=-np.inf)
        q = np.nan_to_num(np.asarray(tree.value(kids), dtype=np.float64), nan=-np.inf)
        best = int(kids[np.lexsort((kids, -q, -t))[0]])
        out.append(best)
        kids = tree.children(best)
    return out


def preference_pairs(tree: Tree, targets: np.ndarray, margin: float = 0.2, min_visits: int = 0) -> list[dict]:
    """Sibling pairs whose targets differ by at least `margin` (see the module docstring);
    each dict has prefix, chosen/rejected step and full texts, and the two values."""
    pairs = []
    tolerance = 1e-9  # values like 1/3 - 2/9 must not miss a margin they meet on paper
    visits = tree.column("visits")
    for parent in np.flatnonzero(tree.column("num_children") >= 2):
        kids = [
            int(k)
            for k in tree.children(int(parent))
            if not math.isnan(targets[k]) and visits[k] >= min_visits
        ]
        if len(kids) < 2:
            continue
        prefix = "".join(tree.steps(int(parent)))
        for a_pos, a in enumerate(kids):
            for b in kids[a_pos + 1 :]:
                hi, lo = (a, b) if targets[a] >= targets[b] else (b, a)
                if targets[hi] - targets[lo] < margin - tolerance:
                    continue
                if tree.text[hi].strip() == tree.text[lo].strip():
                    continue
                full = {}
                for name, node in (("chosen", hi), ("rejected", lo)):
                    rest = best_continuation(tree, node, targets)
                    full[name] = prefix + tree.text[node] + "".join(tree.text[i] for i in rest)
                pairs.append(
                    {
                        "prefix": prefix,
                        "chosen_step": tree.text[hi],
                        "rejected_step": tree.text[lo],
                        "chosen_text": full["chosen"],
                        "rejected_text": full["rejected"],
                        "chosen_value": float(targets[hi]),
                        "rejected_value": float(targets[lo]),
                    }
                )
    return pairs


# ------------------------------------------------------------------------- run folders
class _Run:
    """One run folder's config, task and finished trees."""

    def __init__(self, path: PathLike):
        from treesearch.components import build_task, plain
        from treesearch.runfolder import RunFolder

        self.path = Path(path).expanduser().resolve()
        self.folder = RunFolder.existing(self.path)
        cfg = self.folder.config()
        self.manifest = self.folder.manifest()
        if "task" not in cfg:
            raise ValueError(f"{self.path / RunFolder.CONFIG}: no 'task' section")
        self.task_cfg = plain(cfg["task"])
        self.critic = plain(cfg.get("critic")).get("name")
        self.task = build_task(self.task_cfg)
        self._problems: Optional[dict] = None
        self.skipped = {"unfinished": 0, "errors": 0, "missing_trees": 0}

    def prompt(self, tree: Tree) -> Any:
        """The prompt the search used (stored in the tree), else the task's rendering."""
        if tree.prompt:
            return tree.prompt
        if self._problems is None:
            from treesearch.components import load_problems

            try:
                self._problems = {p.id: p for p in load_problems(self.task, self.task_cfg)}
            except NotImplementedError as err:
                raise ValueError(f"{self.path}: tree {tree.problem_id!r} has no prompt and {err}") from err
        if tree.problem_id not in self._problems:
            raise ValueError(f"{self.path}: tree {tree.problem_id!r} has no prompt and its problem is not in the task data")
        return self.task.prompt(self._problems[tree.problem_id])

    def trees(self) -> Iterable[Tree]:
        for pid in self.manifest.get("problem_ids", []):
            result = self.folder.result(pid)
            if result is None:
                self.skipped["unfinished"] += 1
                continue
            if result.get("error"):
                self.skipped["errors"] += 1
                continue
            if not self.folder.tree_path(pid).exists():
                self.skipped["missing_trees"] += 1
                continue
            yield self.folder.load_tree(pid)


def _write_table(rows: list[dict], feats, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from treesearch.runfolder import replaced_atomically

    schema = feats.arrow_schema
    with replaced_atomically(path) as tmp:
        if rows:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        else:
            pq.ParquetWriter(tmp, schema).close()
    return path


def harvest(
    runs: Union[PathLike, Sequence[PathLike]],
    out: PathLike,
    *,
    top_k: int = HarvestConfig.top_k,
    values: str = HarvestConfig.values,
    margin: float = HarvestConfig.margin,
    min_visits: int = 0,
    labels: str = HarvestConfig.labels,
    reject_lucky: str = HarvestConfig.reject_lucky,
    prompts: str = HarvestConfig.prompts,
) -> dict[str, Path]:
    """Turn the trees of run folders into out/{sft,prm,preference}.parquet and
    out/harvest.json; return their paths by name ("sft", "prm", "preference", "manifest").

    `values`: "inferred" (ReST-MCTS*) or "mc" value targets for PRM labels, pair values
    and the SFT ranking fallback. `top_k`: SFT traces kept per problem. `margin`: least
    target difference of a preference pair. `min_visits`: least visits of a sibling that
    takes part in a pair. `labels`: "gold" (terminals graded against the gold answers at
    search time), "vote" (label-free: each tree's terminals graded against its own
    majority answer) or "self_verify" (label-free: the majority weighted by each
    terminal's critic value, e.g. the policy's own verification under `critic=self_eval`;
    `treesearch.pseudo_labels`); label-free harvests record the share of right
    pseudo-labels where gold answers exist. `reject_lucky`: "arithmetic" counts a correct
    terminal with a step whose arithmetic is wrong ("3 + 4 = 8", `treesearch.step_checks`)
    as not correct, so it is no SFT trace and lifts no value target; "none" keeps it.
    `prompts`: "searched" (each row's prompt is the one the search used) or "zero_shot"
    (the same, less its worked examples: the trained model learns to solve without them,
    as context distillation does; `without_demonstrations`).
    """
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    parameters = _checked_parameters(runs, top_k, values, margin, min_visits, labels, reject_lucky, prompts)
    feats = _features()
    folders = [_Run(r) for r in runs]  # fail on a bad folder before writing anything
    for run in folders:
        check_label_free_critic(labels, run.critic, f"harvest of {run.path}")
    seen = [f.path for f in folders]
    if len(set(seen)) != len(seen):
        raise ValueError(f"harvest: a run folder is given twice: {sorted({str(p) for p in seen if seen.count(p) > 1})}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    sft_pool: dict[str, list[dict]] = {}
    rows: dict[str, list[dict]] = {"prm": [], "preference": []}
    lineage = []
    problems: set[str] = set()
    pseudo_checks: list[bool] = []  # label-free: whether each pseudo-label matches the gold answer
    rankings = {source: TargetRanking(source) for source in VALUE_SOURCES}
    for run in folders:
        counts = {"trees": 0, "prm": 0, "preference": 0, "sft_candidates": 0, "lucky_terminals": 0}
        for tree in run.trees():
            counts["trees"] += 1
            problems.add(tree.problem_id)
            if labels != "gold":
                pseudo = pseudo_label(tree, run.task, labels)
                apply_label(tree, run.task, pseudo)
                gold = (run.folder.result(tree.problem_id) or {}).get("gold")
                if gold is not None:
                    pseudo_checks.append(pseudo is not None and bool(run.task.grade(pseudo, gold)))
            if reject_lucky == "arithmetic":
                lucky = lucky_terminals(tree)
                tree.reward[lucky] = 0.0
                counts["lucky_terminals"] += len(lucky)
            for ranking in rankings.values():
                ranking.add(tree)
            candidates, prm, pairs = _tree_rows(run, tree, values, margin, min_visits, prompts)
            sft_pool.setdefault(tree.problem_id, []).extend(candidates)
            rows["prm"] += prm
            rows["preference"] += pairs
            counts["sft_candidates"] += len(candidates)
            counts["prm"] += len(prm)
            counts["preference"] += len(pairs)
        lineage.append(
            {
                "name": run.path.name,  # what the rows' `run` column holds
                "path": str(run.path),
                "digest": run.manifest.get("digest"),
                "task": run.task_cfg.get("name"),
                "problems": len(run.manifest.get("problem_ids", [])),
                **counts,
                "skipped": run.skipped,
            }
        )
    rows["sft"] = _sft_rows(sft_pool, int(top_k))

    paths = {name: _write_table(rows[name], feats[name], out / FILES[name]) for name in FILES}
    from treesearch.runfolder import write_atomic

    counts = {
        "runs": len(folders),
        "trees": sum(r["trees"] for r in lineage),
        "problems": len(problems),
        "problems_with_sft": len({row["problem_id"] for row in rows["sft"]}),
        "lucky_terminals": sum(r["lucky_terminals"] for r in lineage),
        **{name: len(rows[name]) for name in FILES},
    }
    if labels != "gold":
        counts["pseudo_labels_checked"] = len(pseudo_checks)
        counts["pseudo_label_accuracy"] = sum(pseudo_checks) / len(pseudo_checks) if pseudo_checks else None
    record = _manifest_record(parameters, counts, feats, lineage)
    record["target_ranking"] = {source: ranking.as_dict() for source, ranking in rankings.items()}
    manifest = out / MANIFEST
    write_atomic(manifest, json.dumps(record, indent=2).encode())
    paths["manifest"] = manifest
    return paths


def _checked_parameters(runs: Sequence, top_k: int, values: str, margin: float, min_visits: int, labels: str,
                        reject_lucky: str, prompts: str) -> dict:
    if not runs:
        raise ValueError("harvest: no run folders given")
    if values not in VALUE_SOURCES:
        raise ValueError(f"harvest: values must be one of {VALUE_SOURCES}, got {values!r}")
    if int(top_k) < 1:
        raise ValueError(f"harvest: top_k must be >= 1, got {top_k}")
    if not 0 <= margin <= 1:
        raise ValueError(f"harvest: margin must be in [0, 1], got {margin}")
    if int(min_visits) < 0:
        raise ValueError(f"harvest: min_visits must be >= 0, got {min_visits}")
    if labels not in LABEL_SOURCES:
        raise ValueError(f"harvest: labels must be one of {LABEL_SOURCES}, got {labels!r}")
    if reject_lucky not in LUCKY_CHECKS:
        raise ValueError(f"harvest: reject_lucky must be one of {LUCKY_CHECKS}, got {reject_lucky!r}")
    if prompts not in PROMPT_FORMS:
        raise ValueError(f"harvest: prompts must be one of {PROMPT_FORMS}, got {prompts!r}")
    return {"top_k": int(top_k), "values": values, "margin": float(margin), "min_visits": int(min_visits),
            "labels": labels, "reject_lucky": reject_lucky, "prompts": prompts}


def _tree_rows(run: _Run, tree: Tree, values: str, margin: float, min_visits: int,
               prompts: str = "searched") -> tuple[list, list, list]:
    """One tree's SFT candidates, PRM rows and preference pairs."""
    prompt = run.prompt(tree)
    if prompts == "zero_shot":
        prompt = without_demonstrations(prompt)
    messages, text = chat_messages(prompt), prompt_text(prompt)
    targets = value_targets(tree, values)
    base = {"problem_id": tree.problem_id, "run": run.path.name}
    candidates = [{**cand, **base, "messages": messages} for cand in sft_candidates(tree, targets)]
    # a plain-text prompt stays plain (prompt_messages null), so the PRM trainer renders
    # it exactly as the PRM critic will at scoring time
    chat = None if isinstance(prompt, str) else messages
    prm = [{**base, "source": values, "prompt": text, "prompt_messages": chat, **row} for row in prm_rows(tree, targets)]
    pairs = [
        {
            "problem_id": tree.problem_id,
            "source": values,
            "prompt": messages,
            "chosen": _assistant(pair["chosen_text"].rstrip()),
            "rejected": _assistant(pair["rejected_text"].rstrip()),
            "prefix": pair["prefix"],
            "chosen_step": pair["chosen_step"],
            "rejected_step": pair["rejected_step"],
            "chosen_value": pair["chosen_value"],
            "rejected_value": pair["rejected_value"],
            "run": run.path.name,
        }
        for pair in preference_pairs(tree, targets, margin, min_visits)
    ]
    return candidates, prm, pairs


def _sft_rows(pool: dict[str, list[dict]], top_k: int) -> list[dict]:
    """The best `top_k` SFT traces per problem, in conversational form."""
    sft = []
    for pid, cands in pool.items():
        for cand in rank_sft(cands, top_k):
            completion = _assistant(cand["solution"].rstrip())
            sft.append(
                {
                    "problem_id": pid,
                    "prompt": cand["messages"],
                    "completion": completion,
                    "messages": cand["messages"] + completion,
                    "value": _nan_to_none(cand["value"]),
                    "run": cand["run"],
                    "node": cand["node"],
                }
            )
    return sft


def _manifest_record(parameters: dict, counts: dict, feats: dict, lineage: list) -> dict:
    """harvest.json: parameters, value source, counts, features and lineage."""
    values = parameters["values"]
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "parameters": parameters,
        "sources": {
            "values": values,
            "description": (
                "ReST-MCTS* inferred process values: v_k = max(v_{k-1} + (1 - v_{k-1}) * r_k / (m_k + 1), 0), v_0 = 0"
                if values == "inferred"
                else "Monte Carlo: sample-weighted fraction of graded terminal descendants that are correct"
            ),
            "sft_ranking": "terminal search value (tree.value), else mean of the path's value targets",
        },
        "counts": counts,
        "files": dict(FILES),
        "features": {name: feats[name].to_dict() for name in FILES},
        "runs": lineage,
    }
