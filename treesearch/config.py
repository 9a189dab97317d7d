"""The Hydra configs' schemas: every default of the config groups is defined once, here,
in `treesearch.schemas` (task, policy, critic, selftrain) or in the dataclass it comes
from, and the YAML files under `configs/` only select a schema and override what differs.

The search schemas are built from the algorithms' own config dataclasses
(`MCTSConfig`, `BeamConfig`, ...) and `DEFAULT_BUDGET`, so `treesearch.search()` and
`treesearch search` run the same search. `compose()` gives the config the CLI would
build from a list of overrides.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from treesearch import schemas
from treesearch.search import ALGORITHMS
from treesearch.search.base import SearchConfig
from treesearch.search.budget import DEFAULT_BUDGET, Budget

CLUSTER_KINDS = ("ray", "inprocess")


@dataclass
class Scheduling:
    """How a run shares the models: `trees_in_flight` searches at once (None: sized from
    the policy engine, `treesearch.runner.default_trees_in_flight`); requests batched up
    to `max_batch_size` per model replica, waiting at most `max_wait_ms` for a batch to
    fill. The defaults of the Python API and of a job (`job` config) alike."""

    trees_in_flight: Optional[int] = None
    max_batch_size: int = 32
    max_wait_ms: float = 5.0


@dataclass
class JobConfig(Scheduling):
    """`job`: where results go and how the job runs (the scheduling fields are the
    Python API's too). `output_dir` None: `<output_root>/<task>-<algorithm>-<digest>`.
    `abstain_below`: answer only where the chosen answer's value is at least this
    (selective answering; metrics.json's `selective` lists the abstentions)."""

    output_root: str = "runs"
    output_dir: Optional[str] = None
    resume: bool = True
    redo_errors: bool = True
    progress: bool = True
    save_trees: bool = True
    abstain_below: Optional[float] = None


@dataclass
class PoolConfig:
    """Ray resources of one model's actor pool (`cluster.policy`, `cluster.critic`).
    `runtime_env`: Ray's, e.g. `{env_vars: {PYTHONPATH: ...}}` to reach user code."""

    replicas: int = 1
    num_cpus: float = 1
    num_gpus: float = 0
    max_restarts: int = 3
    max_task_retries: int = 3
    max_concurrency: int = 4
    runtime_env: Optional[Dict[str, Any]] = None


@dataclass
class ClusterConfig:
    """`cluster`: `kind` "ray" hosts the models in Ray actor pools (`address` None starts a
    local cluster; "auto" or "ray://host:10001" joins one); "inprocess" builds them in
    this process (a notebook, a debugger, a machine without Ray); pools are then unused.
    `critic_on_policy_engine`: a `self_eval`, `loglik` or `rollout` critic on a vLLM
    policy's own model runs on the policy's engine, beside it (in the policy actors), so
    no second copy of the model loads; false gives it its own pool and copy."""

    kind: str = "ray"
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    critic_on_policy_engine: bool = True
    policy: PoolConfig = field(default_factory=PoolConfig)
    critic: PoolConfig = field(default_factory=PoolConfig)


def _editable(cls: type, name: str, defaults: Any = None) -> type:
    """A mutable copy of dataclass `cls` (resolved field types) for OmegaConf, with the
    defaults of instance `defaults` when given."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name) if defaults is not None else f.default
        fields.append((f.name, hints[f.name], field(default=value)))
    return dataclasses.make_dataclass(name, fields)


BudgetConfig = _editable(Budget, "BudgetConfig", DEFAULT_BUDGET)


def search_schema(algorithm: str) -> type:
    """The `search` group's schema for `algorithm`: its name, the budget and its options."""
    options = ALGORITHMS[algorithm].Config
    return dataclasses.make_dataclass(
        f"{options.__name__}Search",
        [
            ("algorithm", str, field(default=algorithm)),
            ("budget", BudgetConfig, field(default_factory=BudgetConfig)),
            ("options", options, field(default_factory=options)),
        ],
    )


# Options whose default differs between algorithms: each algorithm's own applies.
PER_ALGORITHM_OPTIONS = ("answer_selection",)


def common_search() -> dict:
    """The deprecated `search/_common` block (configs/search/_common.yaml), for search YAML
    files written before the search schemas (`defaults: [_common, _self_]`): the default
    budget and the options every algorithm shares, as an untyped node the file adds its
    `algorithm` and options to. Built from `DEFAULT_BUDGET` and `SearchConfig`."""
    options = {k: v for k, v in dataclasses.asdict(SearchConfig()).items() if k not in PER_ALGORITHM_OPTIONS}
    return {"budget": dataclasses.asdict(BudgetConfig()), "options": options}


_registered = False


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore under `schema/<group>/<name>` (idempotent):
    one per search algorithm, per option of the task, policy and critic groups
    (`treesearch.schemas.GROUP_SCHEMAS`), `schema/job/default`, `schema/cluster/default`
    and `schema/selftrain/default`."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name in ALGORITHMS:
        try:
            store.store(group="schema/search", name=name, node=search_schema(name))
        except Exception as err:  # a user's algorithm whose options OmegaConf cannot type
            logging.getLogger(__name__).warning("search algorithm %r has no config schema (%s); "
                                                "the CLI cannot select it", name, err)
    store.store(group="schema/search", name="_common", node=common_search())
    for group, options in schemas.GROUP_SCHEMAS.items():
        for name, node in options.items():
            store.store(group=f"schema/{group}", name=name, node=node)
    store.store(group="schema/job", name="default", node=JobConfig)
    store.store(group="schema/cluster", name="default", node=ClusterConfig)
    store.store(group="schema/selftrain", name="default", node=schemas.SelftrainConfig)
    store.store(group="schema/synthesize", name="default", node=schemas.SynthesizeConfig)
    _registered = True


def config_dir() -> Path:
    """The Hydra config folder: `treesearch/configs` in an installed wheel, else
    `configs/` at the top of the source tree (a checkout or an editable install)."""
    register_schemas()  # the YAML files select them: composing without them would fail
    package = Path(__file__).resolve().parent
    candidates = (package / "configs", package.parent / "configs")
    for folder in candidates:
        if (folder / "search.yaml").is_file():
            return folder
    raise FileNotFoundError(
        f"treesearch configs not found (looked in {', '.join(map(str, candidates))}); reinstall treesearch")


def compose(config_name: str = "search", overrides: Sequence[str] = ()):
    """The config `treesearch <config_name> <overrides>` would run (an OmegaConf DictConfig)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_schemas()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def with_defaults(schema: type, section: Optional[Mapping]) -> dict:
    """`section` (a plain mapping, e.g. built by hand) over the defaults of `schema`."""
    from treesearch.components import plain

    return {**dataclasses.asdict(schema()), **plain(section)}


MISSING_VALUE = "???"


def missing_values(cfg: Mapping, sections: Sequence[str]) -> list[str]:
    """The mandatory values (`???` in a schema or YAML file) that `cfg` leaves unset in
    `sections`, as dotted keys (`task.path`)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    found: list[str] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, (DictConfig, ListConfig)):  # read as written: no interpolation resolved
            node = OmegaConf.to_container(node, resolve=False)
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{key}.{k}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, str) and node == MISSING_VALUE:
            found.append(key)

    for name in sections:
        walk(cfg.get(name), name)
    return found


def require_values(cfg: Mapping, sections: Sequence[str]) -> None:
    """Raise ValueError naming every mandatory value of `sections` that `cfg` leaves unset."""
    missing = missing_values(cfg, sections)
    if missing:
        example = " ".join(f"{key}=..." for key in missing)
        raise ValueError(f"mandatory config value{'s' if len(missing) > 1 else ''} not set: {', '.join(missing)} "
                         f"(give {'them' if len(missing) > 1 else 'it'} on the command line: {example})")
