"""Self-training rounds: search -> harvest -> train policy and PRM -> evaluate -> next round.

Folder layout (`selftrain.output_dir`, default `<output_root>/selftrain-<digest>`):

    baseline/eval_greedy/        the starting policy, greedy on the dev split
    round-<r>/search/            batch search of the train split (training-data mode: the
                                 critic is the gold-answer verifier unless configured)
    round-<r>/search-<label>/    the same for each `selftrain.extra_train` split
    round-<r>/data/              harvested SFT / PRM / preference datasets
    round-<r>/policy/            the SFT-trained policy (a Hugging Face folder)
    round-<r>/prm/               the trained PRM (value head; critics.prm.PRMCritic loads it)
    round-<r>/eval_greedy/       new policy, greedy, dev split
    round-<r>/eval_search/       new policy + new PRM, the configured search, dev split
                                 (its first `eval.search_limit` problems)
    round-<r>/eval_greedy-<label>/, eval_search-<label>/   each `selftrain.extra_dev` split
    round-<r>/bstar/             k samples per dev problem (best-of-N) for B-STaR figures
    round-<r>/round.json         lineage (models and data in and out) and metrics
    summary.json                 every round's metrics
    accuracy_by_round.png        dev accuracy by round, one line per split and evaluation

Dev figures carry their standard error and, from round 0 on, paired differences on the
same problems against the baseline and the previous round (`treesearch.round_stats`).

Every stage's output is its own marker: a rerun skips finished stages and resumes a
half-done search job, so a crashed round resumes where it stopped. The policy and critic
actors stay up across all stages; new weights are loaded into them in place.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from treesearch.components import plain
from treesearch.config import JobConfig, require_values
from treesearch.jobs import JOB_SECTIONS, checked_search, job_digest, without_neutral_defaults
from treesearch.pseudo_labels import check_label_free_critic
from treesearch.round_stats import add_comparisons, plot_rounds, standard_error
from treesearch.runfolder import RunFolder, write_atomic
from treesearch.schemas import TASK_SCHEMAS, BStarConfig, EvalConfig, HarvestConfig, PolicyTraining, PRMTraining
from treesearch.search.base import SearchConfig

log = logging.getLogger(__name__)


# keys added to the selftrain section later, left out of its digest at their default
SELFTRAIN_NEUTRAL_DEFAULTS = {("harvest", "labels"): "gold", ("harvest", "reject_lucky"): "arithmetic",
                              ("policy_training", "report_to"): "none", ("prm_training", "report_to"): "none",
                              ("eval", "search_limit"): None, ("bstar", "sample_counts"): [],
                              ("bstar", "count_tolerance"): 0.9, ("extra_train",): [], ("extra_dev",): [],
                              ("prm_training", "warm_start"): False, ("harvest", "prompts"): "searched",
                              ("fresh_problems",): False, ("prm_training", "rank_weight"): 0.0}


def selftrain_digest(cfg: Mapping, legacy: bool = False) -> str:
    """The job digest plus the `selftrain` section (but not the number of rounds, so that
    asking for more rounds continues the same folder). B-STaR's settings count only when
    they steer the rounds (`choose_temperature`, `sample_counts`); otherwise they are monitoring.

    `legacy=True`: the digest folders got before relative B-STaR thresholds existed (the
    B-STaR section always counted, with an absolute threshold, 0.5 by default), so those
    folders still resume."""
    st = {k: v for k, v in plain(cfg["selftrain"]).items() if k != "rounds"}
    st = without_neutral_defaults(st, SELFTRAIN_NEUTRAL_DEFAULTS)
    bstar = dict(st.get("bstar") or {})
    if legacy:
        bstar.pop("quantiles", None)
        bstar["threshold"] = 0.5 if bstar.get("threshold") is None else bstar["threshold"]
        st["bstar"] = bstar
    elif not (bstar.get("choose_temperature", False) or bstar.get("sample_counts")):
        st.pop("bstar", None)
    return hashlib.sha256((job_digest(cfg) + json.dumps(st, sort_keys=True, default=str)).encode()).hexdigest()


def _derive(cfg: DictConfig, **sections: Any) -> DictConfig:
    """A copy of `cfg` with whole sections replaced (None keeps the section). The copy is
    made before interpolations are resolved, so `${policy.model}` elsewhere (a self-eval
    critic, the rollout policy) follows a replaced policy."""
    out = OmegaConf.to_container(cfg, resolve=False)
    out.update({k: v for k, v in sections.items() if v is not None})
    return OmegaConf.create(out)


def _json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


class SelfTraining:
    """Runs the rounds of one self-training config. `models` are the running models (`treesearch.hosting`)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.st = plain(cfg["selftrain"])
        root = self.st.get("output_dir")
        if not root:
            output_root = Path(plain(cfg["job"]).get("output_root", JobConfig.output_root))
            root = output_root / f"selftrain-{selftrain_digest(cfg)[:10]}"
            older = output_root / f"selftrain-{selftrain_digest(cfg, legacy=True)[:10]}"
            if not root.exists() and older.exists():  # a folder this config got from an earlier version
                root = older
        self.root = Path(root)
        self.models = None
        labels = (self.st.get("harvest") or {}).get("labels", HarvestConfig.labels)
        check_label_free_critic(labels, plain(cfg.get("critic")).get("name"), "selftrain.harvest")

    # ---------------------------------------------------------------- configs
    def dev_task(self) -> dict:
        """The train task's config with the dev split's keys over it (a train `offset`
        is not inherited: dev starts at its own `offset`, default 0)."""
        return self.split_task(plain(self.st["dev"]))

    def split_task(self, split: Mapping) -> dict:
        """A task config for a split: its keys over the train task's (from offset 0), or,
        with `task: <option>` (`gsm8k`, `mawps`, `math500`), over that task's defaults."""
        split = dict(split)
        split.pop("label", None)
        option = split.pop("task", None)
        if option is None:
            task = plain(self.cfg["task"])
        elif option in TASK_SCHEMAS:
            task = plain(OmegaConf.structured(TASK_SCHEMAS[option]))
        else:
            raise ValueError(f"selftrain split {dict(split)}: task must be one of {sorted(TASK_SCHEMAS)}, got {option!r}")
        task["offset"] = 0
        task.update(split)
        return task

    def primary_label(self, section: str) -> str:
        """The name of the train (`task`) or dev (`dev`) split in figures and folders."""
        spec = plain(self.cfg["task"]) if section == "task" else plain(self.st["dev"])
        return _split_label(spec) or "dev"

    def extra_splits(self, key: str) -> dict[str, dict]:
        """`selftrain.extra_train` / `extra_dev`: {label: task config}, labels from each
        split's `label` or its file's name."""
        primary = self.primary_label("task" if key == "extra_train" else "dev")
        out: dict[str, dict] = {}
        for i, split in enumerate(self.st.get(key) or []):
            if not isinstance(split, Mapping):
                raise ValueError(f"selftrain.{key}[{i}] must be a mapping of task keys (path, offset, limit, ...), "
                                 f"got {split!r}")
            label = str(split.get("label") or _split_label(split) or "")
            if not label or not all(c.isalnum() or c in "-_." for c in label):
                raise ValueError(f"selftrain.{key}[{i}]: give it a label of letters, digits, '-', '_' or '.' "
                                 f"(label: ...), got {label!r}")
            if label in out or label == primary:
                raise ValueError(f"selftrain.{key}[{i}]: the label {label!r} is taken; give each split its own label")
            out[label] = self.split_task(split)
        return out

    def job_cfg(self, folder: Path, policy_model: str, *, task=None, critic=None, search=None) -> DictConfig:
        """A search-job config for one stage."""
        policy = dict(OmegaConf.to_container(self.cfg["policy"], resolve=False), model=policy_model)
        job = dict(plain(self.cfg["job"]), output_dir=str(folder))
        return _derive(self.cfg, task=task, critic=critic, search=search, policy=policy, job=job)

    def round_slice(self, task: dict, r: int) -> dict:
        """The train split `task` as round `r` searches it: itself, or with
        `fresh_problems` its r-th next slice of `limit` problems."""
        if not self.st.get("fresh_problems"):
            return task
        limit = task.get("limit")
        if not limit:
            raise ValueError(f"selftrain.fresh_problems: the train split {_split_label(task) or task.get('name')!r} "
                             "needs a task limit (the size of each round's slice)")
        return dict(task, offset=(task.get("offset") or 0) + r * int(limit))

    def prm_critic(self, prm: Optional[str]) -> Optional[dict]:
        if prm is None:
            return None
        base = plain(self.st.get("eval_critic") or {})
        return {**base, "name": "prm", "model": prm, "style": "value_head"}

    # ----------------------------------------------------------------- stages
    def _run_job(self, cfg: DictConfig) -> Path:
        from treesearch.jobs import run_job, start_models

        if self.models is None:
            self.models = start_models(cfg)
        return run_job(cfg, self.models)

    def evaluate(self, folder: Path, policy: str, prm: Optional[str]) -> dict:
        """Greedy (and, with a PRM, search) accuracy on the dev split and each extra one."""
        if self.st["eval"].get("search", EvalConfig.search) and prm is None:
            log.warning("no PRM yet (none trained, no selftrain.initial_prm): dev search evaluation skipped")
        out = self._evaluate_split(folder, "", self.dev_task(), policy, prm)
        extra = {label: self._evaluate_split(folder, f"-{label}", task, policy, prm)
                 for label, task in self.extra_splits("extra_dev").items()}
        if extra:
            out["extra_dev"] = extra
        return out

    def _evaluate_split(self, folder: Path, suffix: str, dev: dict, policy: str, prm: Optional[str]) -> dict:
        out: dict[str, Any] = {}
        evaluation = self.st["eval"]
        if evaluation.get("greedy", EvalConfig.greedy):
            greedy = _flat_search(self.cfg, "greedy", 1, answer_selection="value")
            cfg = self.job_cfg(folder / f"eval_greedy{suffix}", policy, task=dev, critic={"name": None}, search=greedy)
            out["dev_greedy"] = _metrics(self._run_job(cfg))
        if evaluation.get("search", EvalConfig.search) and prm is not None:
            limit = evaluation.get("search_limit", EvalConfig.search_limit)
            task = dev if limit is None else dict(dev, limit=limit if dev.get("limit") is None else min(limit, dev["limit"]))
            cfg = self.job_cfg(folder / f"eval_search{suffix}", policy, task=task, critic=self.prm_critic(prm))
            out["dev_search"] = _metrics(self._run_job(cfg))
        return out

    def bstar(self, folder: Path, policy: str, prm: Optional[str]) -> dict:
        """B-STaR figures at each candidate temperature; the chosen one for the next round."""
        from treesearch.bstar import best_balanced, choose_sample_count, samples_from_tree

        cfg_b = self.st["bstar"]
        if not cfg_b.get("enabled", BStarConfig.enabled):
            return {}
        if prm is None:
            log.warning("no PRM yet: B-STaR figures need one and are skipped this round")
            return {}
        searched = plain(self.cfg["search"])["options"].get("temperature", SearchConfig.temperature)
        temps = list(cfg_b.get("temperatures") or [searched])
        if not cfg_b.get("choose_temperature", BStarConfig.choose_temperature):
            temps = temps[:1]
        dev = dict(self.dev_task(), limit=cfg_b.get("limit"))
        absolute = cfg_b.get("threshold")  # when set, it is the threshold; else the best of `quantiles`
        thresholds = [] if absolute is None else [absolute]
        quantiles = cfg_b.get("quantiles") or [] if absolute is None else []
        n_star = cfg_b.get("n_star", BStarConfig.n_star)
        per_temperature, samples = {}, {}
        for t in temps:
            search = _flat_search(
                self.cfg, "best_of_n", cfg_b["k"], samples=cfg_b["k"], parallel=cfg_b["k"], temperature=t,
                answer_selection="value",
            )
            cfg = self.job_cfg(folder / "bstar" / f"t{t}", policy, task=dev, critic=self.prm_critic(prm), search=search)
            run = self._run_job(cfg)
            samples[str(t)] = [samples_from_tree(tree) for tree in RunFolder(run).saved_trees()]
            per_temperature[str(t)] = best_balanced(samples[str(t)], thresholds, quantiles, n_star)
        best = max(per_temperature, key=lambda k: per_temperature[k].get("balance_score", 0.0))
        out = {"by_temperature": per_temperature, "chosen_temperature": float(best)}
        counts = cfg_b.get("sample_counts") or []
        if counts:
            chosen = choose_sample_count(samples[best], counts, thresholds, quantiles, n_star,
                                         float(cfg_b.get("count_tolerance", BStarConfig.count_tolerance)),
                                         shuffle_seed=0)
            out.update(by_sample_count={str(c): m for c, m in chosen["by_count"].items()},
                       chosen_sample_count=chosen["chosen_sample_count"],
                       budget_scale=chosen["chosen_sample_count"] / int(cfg_b["k"]))
        return out

    def run(self, on_round: Optional[Callable[[dict], None]] = None) -> dict:
        """Run (or resume) every round; return the summary."""
        from treesearch.bstar import check_sample_counts
        from treesearch.harvest import harvest
        from treesearch.train import train_prm, train_sft
        from treesearch.train.common import require_training_stack

        require_values(self.cfg, (*JOB_SECTIONS, "selftrain"))
        checked_search(plain(self.cfg["search"]))  # a bad round search is refused now, not after the baseline
        cfg_b = self.st["bstar"]
        if cfg_b.get("enabled", BStarConfig.enabled) and cfg_b.get("sample_counts"):
            try:  # now, not at the end of round 0
                check_sample_counts(cfg_b["sample_counts"], float(cfg_b.get("count_tolerance", BStarConfig.count_tolerance)),
                                    int(cfg_b["k"]))
            except ValueError as e:
                raise ValueError(f"selftrain.bstar (sample_counts, count_tolerance, k): {e}") from None
        train_p, train_v = self.st["policy_training"], self.st["prm_training"]
        needed = (("trl", "accelerate") if train_p.get("enabled", PolicyTraining.enabled) else ()) + (
            ("accelerate",) if train_v.get("enabled", PRMTraining.enabled) else ())
        needed += ("peft",) if train_p.get("lora", PolicyTraining.lora) else ()
        require_training_stack("treesearch selftrain", tuple(dict.fromkeys(needed)))  # before any search runs
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.root / "manifest.json"
        digest = selftrain_digest(self.cfg)
        known = {digest, selftrain_digest(self.cfg, legacy=True)}
        if manifest.is_file() and json.loads(manifest.read_text()).get("digest") not in known:
            raise ValueError(
                f"self-training folder {self.root} holds a run with another config; "
                "choose another selftrain.output_dir (only selftrain.rounds may change on resume)"
            )
        write_atomic(manifest, json.dumps({"digest": digest}).encode())
        write_atomic(self.root / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(plain(self.cfg))).encode())
        policy = str(plain(self.cfg["policy"])["model"])
        prm: Optional[str] = self.st.get("initial_prm")
        temperature = plain(self.cfg["search"])["options"].get("temperature", SearchConfig.temperature)
        budget_scale = 1.0
        summary: dict[str, Any] = {"rounds": []}
        dev_label = self.primary_label("dev")
        try:
            baseline = self.root / "baseline"
            summary["baseline"] = _json(baseline / "metrics.json") or self.evaluate(baseline, policy, prm)
            write_atomic(baseline / "metrics.json", json.dumps(summary["baseline"], indent=2).encode())
            for r in range(int(self.st["rounds"])):
                folder = self.root / f"round-{r}"
                record = _json(folder / "round.json")
                if record is None:
                    record = self._round(folder, r, policy, prm, temperature, budget_scale, harvest, train_sft,
                                         train_prm)
                    previous = summary["rounds"][-1] if summary["rounds"] else None
                    add_comparisons(record, dev_label, summary["baseline"], previous)
                    write_atomic(folder / "round.json", json.dumps(record, indent=2, default=str).encode())
                policy, prm = record["policy_out"], record["prm_out"]
                temperature = record.get("next_temperature", temperature)
                budget_scale = record.get("next_budget_scale", budget_scale)
                summary["rounds"].append(record)
                if on_round is not None:
                    on_round(record)
                write_atomic(self.root / "summary.json", json.dumps(summary, indent=2, default=str).encode())
                plot_rounds(summary, dev_label, self.root / "accuracy_by_round.png")
        finally:
            if self.models is not None:
                self.models.shutdown()
                self.models = None
        return summary

    def _round(self, folder, r, policy, prm, temperature, budget_scale, harvest, train_sft, train_prm) -> dict:
        st = self.st
        clock = _StageClock()
        search = copy.deepcopy(plain(self.cfg["search"]))
        search["options"]["temperature"] = temperature
        if budget_scale != 1.0:  # B-STaR's sample count for this round
            budget = search.setdefault("budget", {})
            for key in ("generated_tokens", "policy_calls", "simulations"):
                if budget.get(key):
                    budget[key] = max(1, round(budget[key] * budget_scale))
        with clock("search"):
            primary = self.round_slice(plain(self.cfg["task"]), r)
            run = self._run_job(self.job_cfg(folder / "search", policy, task=primary, search=search))
            extra_runs = {label: self._run_job(self.job_cfg(folder / f"search-{label}", policy,
                                                            task=self.round_slice(task, r), search=search))
                          for label, task in self.extra_splits("extra_train").items()}
        data_dir = folder / "data"
        with clock("harvest"):
            if not (data_dir / "harvest.json").is_file():
                harvest([run, *extra_runs.values()], data_dir, **st["harvest"])
        counts = json.loads((data_dir / "harvest.json").read_text()).get("counts", {})
        record: dict[str, Any] = {
            "round": r,
            "policy_in": policy,
            "prm_in": prm,
            "search_run": str(run),
            "search_temperature": temperature,
            "search_budget": search.get("budget"),
            "search": _metrics(run),
            "data": str(data_dir),
            "data_counts": counts,
            "seconds": clock.seconds,
        }
        if extra_runs:
            record["search_extra"] = {label: _metrics(path) for label, path in extra_runs.items()}
        new_policy, new_prm = policy, prm
        train_p, train_v = st["policy_training"], st["prm_training"]
        if train_p.get("enabled", PolicyTraining.enabled) and counts.get("sft", 0) == 0:
            log.warning("round %d: no correct traces were found, so the policy is not trained", r)
        if train_p.get("enabled", PolicyTraining.enabled) and counts.get("sft", 0) > 0:
            out = folder / "policy"
            metrics = _json(out / "train_metrics.json")
            if metrics is None:
                options = {k: v for k, v in train_p.items() if k != "enabled"}
                with clock("policy_training"):
                    metrics = train_sft(policy, data_dir / "sft.parquet", out, **options)
                write_atomic(out / "train_metrics.json", json.dumps(metrics, indent=2, default=str).encode())
            record["policy_training"] = metrics
            new_policy = str(out)
        if train_v.get("enabled", PRMTraining.enabled) and counts.get("prm", 0) > 0:
            out = folder / "prm"
            metrics = _json(out / "train_metrics.json")
            if metrics is None:
                options = {k: v for k, v in train_v.items() if k not in ("enabled", "base_model", "warm_start")}
                base = prm_base_model(train_v, prm, policy)
                with clock("prm_training"):
                    metrics = train_prm(base, data_dir / "prm.parquet", out, **options)
                metrics["base_model"] = str(base)
                write_atomic(out / "train_metrics.json", json.dumps(metrics, indent=2, default=str).encode())
            record["prm_training"] = metrics
            new_prm = str(out)
        record["policy_out"], record["prm_out"] = new_policy, new_prm
        with clock("evaluation"):
            record.update(self.evaluate(folder, new_policy, new_prm))
        with clock("bstar"):
            bstar = self.bstar(folder, new_policy, new_prm)
        if bstar:
            record["bstar"] = bstar
            if st["bstar"].get("choose_temperature", BStarConfig.choose_temperature):
                record["next_temperature"] = bstar["chosen_temperature"]
            if "budget_scale" in bstar:
                record["next_budget_scale"] = bstar["budget_scale"]
        return record


def prm_base_model(prm_training: Mapping, prm: Optional[str], policy: str) -> str:
    """What a round's PRM trains from: the PRM the round starts with under `warm_start`
    (none yet: as without it), else `base_model`, else the round's policy."""
    if prm and prm_training.get("warm_start", PRMTraining.warm_start):
        return str(prm)
    return str(prm_training.get("base_model") or policy)


COMMON_OPTIONS = ("temperature", "top_p", "max_step_tokens", "max_solution_tokens", "max_depth", "seed", "prior")


def _flat_search(cfg: Mapping, algorithm: str, solutions: int, **options: Any) -> dict:
    """A search section for a flat sampler (greedy, best-of-N) that keeps the configured
    search's shared options, with a budget of `solutions` per problem."""
    base = plain(cfg["search"])["options"]
    shared = {k: base[k] for k in COMMON_OPTIONS if k in base}
    return {
        "algorithm": algorithm,
        "budget": {"generated_tokens": None, "policy_calls": None, "simulations": solutions, "seconds": None},
        "options": {**shared, **options},
    }


class _StageClock:
    """Wall seconds per stage of a round (`with clock("search"): ...`), summed by name."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - started, 1)


def _split_label(spec: Mapping) -> Optional[str]:
    """A split's default name: its file's name without the extension, else its task option."""
    if spec.get("path"):
        return Path(str(spec["path"])).stem
    return spec.get("task") or spec.get("name")


def _metrics(run: Path) -> dict:
    m = RunFolder(Path(run)).metrics()
    correct, graded = m.get("correct"), m.get("graded")
    return {
        "run": str(run),
        "accuracy": m.get("accuracy"),
        "se": standard_error(correct or 0, graded or 0) if graded else None,
        "correct": correct,
        "graded": graded,
        "errors": m.get("errors"),
        "mean_generated_tokens": (m.get("generated_tokens") or {}).get("mean"),
    }


def run_selftrain(cfg: DictConfig, on_round: Optional[Callable[[dict], None]] = None) -> tuple[Path, dict]:
    """Run (or resume) self-training; return its folder and summary."""
    trainer = SelfTraining(cfg)
    return trainer.root, trainer.run(on_round)
