"""One set of defaults: the config `treesearch search` composes equals what the Python API
runs with, for every algorithm, and the YAML files cannot drift from the dataclasses."""

import dataclasses
import inspect
import re

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from treesearch import api
from treesearch.config import Scheduling, compose, config_dir
from treesearch.runner import Runner
from treesearch.schemas import GROUP_SCHEMAS, SelftrainConfig
from treesearch.search import ALGORITHMS, make_algorithm
from treesearch.search.budget import DEFAULT_BUDGET, Budget


def composed(*overrides: str) -> dict:
    return OmegaConf.to_container(compose("search", overrides), resolve=True)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_cli_and_api_compose_the_same_search_for_every_algorithm(algorithm):
    search = composed(f"search={algorithm}")["search"]
    assert search["algorithm"] == algorithm
    api_algorithm = make_algorithm(algorithm)  # what treesearch.search(algorithm=...) builds
    assert search["options"] == dataclasses.asdict(api_algorithm.config)
    # and the CLI's options build that same algorithm
    assert make_algorithm(algorithm, **search["options"]).config == api_algorithm.config
    budget = Budget.from_dict({k: v for k, v in search["budget"].items() if v is not None})
    assert budget == DEFAULT_BUDGET


def test_the_job_schedules_like_the_python_api():
    job = composed()["job"]
    defaults = dataclasses.asdict(Scheduling())
    assert {k: job[k] for k in defaults} == defaults
    for fn in (api.asearch, Runner.__init__):
        params = inspect.signature(fn).parameters
        assert {k: params[k].default for k in defaults} == defaults, fn.__qualname__


def test_no_yaml_comment_restates_a_default_value():
    """A number in a comment ("threads (2)") is a second definition that drifts: the
    comments name the fields, and the schemas hold the values."""
    restated = re.compile(r"\b[a-z_]+ \(-?\d|\blimit \d")
    for path in sorted(config_dir().rglob("*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("#"):
                assert not restated.search(line), f"{path}:{number}: {line.strip()}"


def test_the_yaml_files_select_schemas_and_override_nothing():
    """Defaults are defined once: a value written in a search, job or cluster YAML would be
    a second definition (cluster files only set `kind`)."""
    for group in ("search", "job", "cluster"):
        for path in sorted((config_dir() / group).glob("*.yaml")):
            body = OmegaConf.load(path)
            keys = set(body) - {"defaults"}
            assert keys <= ({"kind"} if group == "cluster" else set()), f"{path}: sets {sorted(keys)}"
            assert any(str(d).startswith(f"/schema/{group}/") for d in body.defaults), path


def test_a_misspelt_option_or_a_wrong_type_is_refused_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose("search", ["search.options.c_pct=2"])
    assert "c_pct" in str(err.value.__cause__)
    with pytest.raises(ConfigCompositionException) as err:
        compose("search", ["search=beam", "search.options.beam_width=wide"])
    assert "beam_width" in str(err.value.__cause__)
    with pytest.raises(ConfigCompositionException):
        compose("search", ["job.trees_in_flight=many"])


def test_cluster_inprocess_is_selectable():
    assert composed("cluster=inprocess")["cluster"]["kind"] == "inprocess"
    assert composed()["cluster"]["kind"] == "ray"


# ------------------------------------------------------------------ task, policy, critic, selftrain

def _flat(node, prefix=""):
    """{dotted key: value} of a plain nested mapping (interpolations left as written)."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _schema_values(schema) -> dict:
    return _flat(OmegaConf.to_container(OmegaConf.structured(schema), resolve=False))


def _set_values(path, section=None) -> dict:
    body = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    body.pop("defaults", None)
    if section is not None:
        body = body.get(section) or {}
    return _flat(body)


def test_every_task_policy_and_critic_option_selects_its_schema_and_sets_only_what_differs():
    """Each option file selects `/schema/<group>/<option>` and writes a value only where it
    overrides the schema's: a value equal to the schema's would be a second definition."""
    for group, options in GROUP_SCHEMAS.items():
        files = {path.stem: path for path in (config_dir() / group).glob("*.yaml")}
        assert set(files) - {"target"} == set(options), group  # every option has a schema, every schema a file
        for name, schema in options.items():
            body = OmegaConf.load(files[name])
            # a global file (policy=vllm, which also asks the cluster for a GPU) keeps its
            # own section under the group's key and may set nothing else but `cluster`
            global_file = "# @package _global_" in files[name].read_text()
            package = group if global_file else "_here_"
            assert f"/schema/{group}/{name}@{package}" in [str(d) for d in body.defaults], files[name]
            if global_file:
                assert set(body) - {"defaults", group, "cluster"} == set(), files[name]
            defaults = _schema_values(schema)
            for key, value in _set_values(files[name], group if global_file else None).items():
                assert key in defaults, f"{files[name]}: {key} is not in {schema.__name__}"
                assert value != defaults[key], f"{files[name]}: {key}: {value!r} repeats {schema.__name__}'s default"
        if "target" in files:  # a plug-in whose keys are the user's code's: no schema
            assert "defaults" not in OmegaConf.load(files["target"])


def test_the_selftrain_section_is_its_schema():
    path = config_dir() / "selftrain.yaml"
    assert "/schema/selftrain/default@selftrain" in [str(d) for d in OmegaConf.load(path).defaults]
    defaults = _schema_values(SelftrainConfig)
    for key, value in _set_values(path, "selftrain").items():
        assert key in defaults and value != defaults[key], f"{path}: selftrain.{key}"
    section = composed_selftrain("selftrain.dev.path=dev.jsonl")["selftrain"]
    assert section["prm_training"]["base_model"] == "smollm2"  # ${policy.model}
    assert section["eval_critic"] == {"aggregate": "last", "device": "auto", "threads": 2}  # critic=prm's


def composed_selftrain(*overrides: str) -> dict:
    return OmegaConf.to_container(compose("selftrain", overrides), resolve=True)


@pytest.mark.parametrize(
    "config, overrides, key, schema",
    [
        ("search", ["policy.treads=2"], "treads", "SmolLM2PolicyConfig"),
        ("search", ["policy=hf", "policy.model=m", "policy.max_batch=4"], "max_batch", "HFPolicyConfig"),
        ("search", ["policy=vllm", "policy.model=m", "policy.gpu_memory=0.5"], "gpu_memory", "VLLMPolicyConfig"),
        ("search", ["task.limt=3"], "limt", "GSM8KTaskConfig"),
        ("search", ["task=mawps", "task.question=q"], "question", "JSONLTaskConfig"),
        ("search", ["critic=prm", "critic.modle=/prm"], "modle", "PRMCriticConfig"),
        ("search", ["critic=verifier", "critic.nonterminal=0.1"], "nonterminal", "VerifierCriticConfig"),
        ("search", ["critic.thread=1"], "thread", "SelfEvalCriticConfig"),
        ("selftrain", ["selftrain.prm_training.epoch=3"], "epoch", "PRMTraining"),
        ("selftrain", ["selftrain.bstar.treshold=0.5"], "treshold", "BStarConfig"),
        ("selftrain", ["selftrain.round=3"], "round", "SelftrainConfig"),
    ],
)
def test_a_misspelt_key_is_refused_at_compose_time_naming_it(config, overrides, key, schema):
    with pytest.raises(ConfigCompositionException) as err:
        compose(config, overrides)
    assert f"Key '{key}' not in '{schema}'" in str(err.value.__cause__)


@pytest.mark.parametrize("override", ["task.limit=many", "policy.threads=two", "critic.threads=all",
                                      "task.skip_bad_rows=maybe"])
def test_a_task_policy_or_critic_value_of_the_wrong_type_is_refused(override):
    with pytest.raises(ConfigCompositionException) as err:
        compose("search", [override])
    assert override.split("=")[0] in str(err.value.__cause__)


def test_keys_a_schema_lacks_are_added_with_plus_and_numbers_stay_as_written():
    cfg = composed("policy=vllm", "policy.model=m", "+policy.enforce_eager=true", "+task.instruction=Think.",
                   "critic=verifier", "critic.nonterminal_value=1", "policy.gpu_memory_utilization=1")
    assert cfg["policy"]["enforce_eager"] is True and cfg["task"]["instruction"] == "Think."
    # an integer stays an integer (as before the schemas: the job digest hashes values as written)
    assert cfg["critic"]["nonterminal_value"] == 1 and type(cfg["critic"]["nonterminal_value"]) is int
    assert type(cfg["policy"]["gpu_memory_utilization"]) is int
    assert type(composed("policy=openvino", "policy.model=m")["policy"]["cache_gb"]) is int
    assert composed("policy=openvino", "policy.model=m", "policy.cache_gb=1.5")["policy"]["cache_gb"] == 1.5
    # trainer keywords pass through selftrain.policy_training / prm_training
    st = composed_selftrain("+selftrain.prm_training.head_lr=0.001", "+selftrain.policy_training.lora_rank=8",
                            "+selftrain.harvest.min_visits=1")["selftrain"]
    assert st["prm_training"]["head_lr"] == 0.001 and st["policy_training"]["lora_rank"] == 8
    assert st["harvest"]["min_visits"] == 1


def test_the_interpolations_users_rely_on_follow_the_policy():
    cfg = composed("policy=hf", "policy.model=/models/m", "critic=rollout")
    assert cfg["critic"]["rollout_policy"] == cfg["policy"]
    for critic in ("self_eval", "loglik"):
        assert composed("policy=hf", "policy.model=/models/m", f"critic={critic}")["critic"]["model"] == "/models/m"
    st = composed_selftrain("policy=hf", "policy.model=/models/m", "selftrain.dev.path=d")["selftrain"]
    assert st["prm_training"]["base_model"] == "/models/m"


def test_target_plugins_take_keys_of_their_own():
    cfg = composed("policy=target", "policy._target_=pkg.Engine", "+policy.size=2",
                   "critic=target", "critic._target_=pkg.value", "+critic.k=3")
    assert cfg["policy"] == {"_target_": "pkg.Engine", "size": 2} and cfg["critic"] == {"_target_": "pkg.value", "k": 3}


@pytest.mark.parametrize(
    "overrides, missing",
    [
        (["task=mawps"], "task.path"),
        (["task=math500", "critic=prm"], "task.path, critic.model"),
        (["policy=hf"], "policy.model"),
        (["policy=target", "critic=none", "search=greedy"], "policy._target_"),
    ],
)
def test_a_mandatory_value_left_unset_stops_the_job_naming_it(tmp_path, overrides, missing):
    from treesearch.jobs import run_job

    cfg = compose("search", [*overrides, "cluster=inprocess", f"job.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match=rf"mandatory config values? not set: {re.escape(missing)} "):
        run_job(cfg)
    assert not (tmp_path / "run").exists()


def test_self_training_names_its_mandatory_values_before_anything_runs(tmp_path):
    from treesearch.selftrain import SelfTraining

    trainer = SelfTraining(compose("selftrain", [f"selftrain.output_dir={tmp_path / 'st'}"]))
    with pytest.raises(ValueError, match=r"not set: task\.path, selftrain\.dev\.path "):
        trainer.run()
    assert not (tmp_path / "st").exists()


def test_task_loading_and_harvest_take_their_defaults_from_the_schemas():
    from treesearch.components import TASK_LOAD_KEYS
    from treesearch.harvest import harvest
    from treesearch.harvest_cli import parser
    from treesearch.schemas import HarvestConfig, TaskConfig

    assert TASK_LOAD_KEYS == tuple(f.name for f in dataclasses.fields(TaskConfig) if f.name != "name")
    params = inspect.signature(harvest).parameters
    ns = parser().parse_args(["run", "out"])
    for f in dataclasses.fields(HarvestConfig):
        assert params[f.name].default == getattr(ns, f.name) == f.default


# the config's own choices for a shared laptop or a job, where a constructor's default differs
JOB_TUNED = {
    "threads": 2,  # the policy and critic actors take turns on two cores (constructors: torch's default)
    "max_batch_size": 64,  # smollm2 (backend auto) on the CPU engine (HFPolicy: 32)
    "question_field": "input", "answer_field": "target",  # the MAWPS format (JSONLTask: question/answer)
    "lr": 2.0e-5,  # self-training's full fine-tuning (train_sft: None, 2e-5 full or 2e-4 LoRA)
}


@pytest.mark.parametrize(
    "schema, builder",
    [
        ("SmolLM2PolicyConfig", "treesearch.policy.hf:HFPolicy"),
        ("HFPolicyConfig", "treesearch.policy.hf:HFPolicy"),
        ("OpenVINOPolicyConfig", "treesearch.policy.openvino:OpenVINOPolicy"),
        ("VLLMPolicyConfig", "treesearch.policy.vllm:VLLMPolicy"),
        ("VLLMCPUPolicyConfig", "treesearch.policy.vllm:VLLMPolicy"),
        ("SelfEvalCriticConfig", "critics.self_eval:SelfEvalCritic"),
        ("ChecklistCriticConfig", "critics.checklist:ChecklistCritic"),
        ("LoglikCriticConfig", "critics.loglik:LogLikelihoodCritic"),
        ("PRMCriticConfig", "critics.prm:PRMCritic"),
        ("RolloutCriticConfig", "critics.rollout:RolloutCritic"),
        ("VerifierCriticConfig", "critics.verifier:VerifierCritic"),
        ("GSM8KTaskConfig", "treesearch.tasks:GSM8KTask"),
        ("MATHTaskConfig", "treesearch.tasks:MATHTask"),
        ("JSONLTaskConfig", "treesearch.tasks:JSONLTask"),
        ("ArithTaskConfig", "treesearch.tasks:ArithTask"),
        ("HarvestConfig", "treesearch.harvest:harvest"),
        ("PolicyTraining", "treesearch.train.sft:train_sft"),
        ("PRMTraining", "treesearch.train.prm:train_prm"),
        ("EvalCritic", "critics.prm:PRMCritic"),
    ],
)
def test_each_schema_key_is_its_builders_and_shared_defaults_agree(schema, builder):
    """A key a schema gives is one the code it configures takes (a config cannot pass a
    keyword the constructor rejects), and where both have a default they agree, except the
    job-level choices in JOB_TUNED."""
    import importlib

    from treesearch import schemas
    from treesearch.components import TASK_LOAD_KEYS

    module, name = builder.split(":")
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    takes_more = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    consumed = {"name", "backend", "rollout_policy", "enabled", "warm_start", *TASK_LOAD_KEYS}  # read by the code that builds it
    for f in dataclasses.fields(getattr(schemas, schema)):
        if f.name in consumed:
            continue
        assert f.name in params or takes_more, f"{schema}.{f.name} is not a parameter of {builder}"
        if f.name not in params or params[f.name].default is inspect.Parameter.empty:
            continue
        ours, theirs = f.default, params[f.name].default
        if ours in ("???", "${policy.model}") or ours == theirs:
            continue
        tuned = JOB_TUNED.get(f.name, ())
        assert ours == tuned or ours in (tuned if isinstance(tuned, tuple) else ()), \
            f"{schema}.{f.name}: {ours!r} here, {theirs!r} in {builder}"


def test_the_deprecated_common_search_block_composes_old_search_files_as_before(tmp_path):
    """A search YAML of a user's own from before the search schemas (`defaults: [_common]`)
    still composes, to the config and job digest it had then (computed with treesearch at
    the commit before the schemas, c45d4be^)."""
    from treesearch.jobs import job_digest
    from treesearch.search.base import SearchConfig

    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "old_beam.yaml").write_text(  # configs/search/beam.yaml then
        "defaults:\n  - _common\n  - _self_\nalgorithm: beam\n"
        "options:\n  beam_width: 4\n  expansions: 4\n  answer_selection: value\n")
    (tmp_path / "search" / "old_sc.yaml").write_text("defaults: [_common, _self_]\nalgorithm: self_consistency\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    cfg = compose("search", ["search=old_beam", searchpath])
    assert job_digest(cfg) == "d76d9a357cf45511f2587a57eff056277e7f61a6bd381f7b347516ba69688e05"
    search = OmegaConf.to_container(cfg.search)
    assert search["budget"] == dataclasses.asdict(DEFAULT_BUDGET)
    assert make_algorithm("beam", **search["options"]).config.beam_width == 4
    assert composed("search=old_beam", searchpath, "search.options.beam_width=2")["search"]["options"]["beam_width"] == 2
    # an option whose default is each algorithm's own is left to the algorithm
    options = composed("search=old_sc", searchpath)["search"]["options"]
    assert "answer_selection" not in options
    assert set(options) == {f.name for f in dataclasses.fields(SearchConfig)} - {"answer_selection"}
    assert make_algorithm("self_consistency", **options).config.answer_selection == "majority"


def test_the_schemas_name_registered_tasks_backends_and_critics():
    from critics import registered_critics
    from treesearch.policy import BACKENDS
    from treesearch.tasks import TASKS

    assert {s.name for s in GROUP_SCHEMAS["task"].values()} <= set(TASKS.names())
    assert {s.backend for s in GROUP_SCHEMAS["policy"].values()} <= set(BACKENDS)
    assert {s.name for s in GROUP_SCHEMAS["critic"].values()} - {None} <= set(registered_critics())
