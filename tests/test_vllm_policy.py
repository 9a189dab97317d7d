"""VLLMPolicy: the real engine where vLLM and a CUDA GPU exist; elsewhere only the import
guard is checked and the engine tests are skipped with the reason."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import math

import numpy as np
import pytest
import torch

from treesearch.policy import Policy, make_policy
from treesearch.policy.steps import find_stop
from treesearch.types import Problem, SamplingParams, State

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
HAVE_CUDA = torch.cuda.is_available()
needs_engine = pytest.mark.skipif(
    not (HAVE_VLLM and HAVE_CUDA),
    reason="the vLLM engine tests need vLLM and a CUDA GPU "
    f"(vllm installed: {HAVE_VLLM}, CUDA available: {HAVE_CUDA})",
)

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
    with pytest.raises(ImportError, match=r"pip install 'treesearch\[vllm\]' on a CUDA machine"):
        make_policy("vllm", model="smollm2")


# -- the real engine (GPU) ------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from treesearch.policy.vllm import VLLMPolicy

    def build():  # the tests call it through asyncio.run: a new event loop for every call
        return VLLMPolicy(
            "smollm2",
            export_dir=tmp_path_factory.mktemp("smollm2-hf"),
            gpu_memory_utilization=0.3,
            max_model_len=2048,
            enforce_eager=True,
        )

    policy = build()
    yield policy
    policy.shutdown()


@needs_engine
def test_expansion_samples_steps(engine):
    assert isinstance(engine, Policy)
    params = SamplingParams(temperature=0.8, max_new_tokens=48, stop=("\n",), seed=0)
    [steps] = asyncio.run(engine.expand([make_state()], 4, params))
    assert len(steps) == 4
    assert len({s.text for s in steps}) >= 2
    for s in steps:
        assert s.text.strip()
        assert 1 <= s.num_tokens <= 48 and s.num_tokens == len(s.token_ids)
        assert math.isfinite(s.logprob) and s.logprob <= 0
        if s.finish_reason == "stop":
            assert find_stop(s.text, ("\n",)) == len(s.text)


@needs_engine
def test_counts_order_seeds_and_limits(engine):
    states = [make_state(), make_state("What is 7 times 6?"), make_state(steps=("16 - 3 = 13.\n",))]
    params = SamplingParams(temperature=1.0, max_new_tokens=16, stop=("\n",), seed=5)
    a = asyncio.run(engine.expand(states, [1, 3, 2], params))
    b = asyncio.run(engine.expand(states, [1, 3, 2], params))
    assert [len(r) for r in a] == [1, 3, 2] == [len(r) for r in b]  # vLLM does not promise equal texts
    short = SamplingParams(temperature=1.0, max_new_tokens=5, seed=1)
    out = asyncio.run(engine.expand(states, 2, short))
    for s in (s for r in out for s in r):
        assert s.num_tokens <= 5
        assert s.finish_reason in ("length", "eos")
    mixed = asyncio.run(engine.expand(states[:2], 2, [params, short]))
    assert [len(r) for r in mixed] == [2, 2]
    assert all(s.num_tokens <= 5 for s in mixed[1])


@needs_engine
def test_complete_splits_into_steps(engine):
    params = SamplingParams(temperature=0.7, max_new_tokens=128, stop=("\n",), seed=2)
    [steps] = asyncio.run(engine.complete([make_state()], params))
    assert steps
    assert all(s.finish_reason == "stop" for s in steps[:-1])
    assert steps[-1].finish_reason in ("eos", "length")
    assert sum(s.num_tokens for s in steps) == len(sum((s.token_ids for s in steps), ()))
    for s in steps[:-1]:
        assert find_stop(s.text, ("\n",)) == len(s.text)


@needs_engine
def test_prefix_counters(engine):
    before = engine.prompt_tokens_naive
    state = make_state()
    params = SamplingParams(temperature=0.8, max_new_tokens=4, seed=0)
    asyncio.run(engine.expand([state], 8, params))
    length = len(engine._encode(state))
    assert engine.prompt_tokens_naive - before == 8 * length


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


@pytest.fixture
def contract_policy(monkeypatch, smollm2_tokenizer):
    """A VLLMPolicy built by its own constructor on the contract-enforcing stand-ins."""
    from types import SimpleNamespace

    import treesearch.models
    import treesearch.policy.vllm as module

    fakes = (_ContractEngine, lambda **kw: SimpleNamespace(**kw), _ContractSamplingParams,
             lambda prompt_token_ids: prompt_token_ids, SimpleNamespace(FINAL_ONLY="final"))
    monkeypatch.setattr(module, "_import_vllm", lambda: fakes)
    monkeypatch.setattr(treesearch.models, "load_tokenizer", lambda name: smollm2_tokenizer)
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
    from types import SimpleNamespace

    import treesearch.models
    import treesearch.policy.vllm as module

    fakes = (_ContractEngine, lambda **kw: SimpleNamespace(**kw), _ContractSamplingParams,
             lambda prompt_token_ids: prompt_token_ids, SimpleNamespace(FINAL_ONLY="final"))
    monkeypatch.setattr(module, "_import_vllm", lambda: fakes)
    monkeypatch.setattr(treesearch.models, "load_tokenizer", lambda name: smollm2_tokenizer)


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
