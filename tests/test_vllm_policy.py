"""VLLMPolicy: the real engine where vLLM and a CUDA GPU exist; elsewhere only the import
guard is checked and the engine tests are skipped with the reason."""

from __future__ import annotations

import asyncio
import importlib.util
import math

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
def loop():
    """One event loop for the module: the engine's output handler lives on it."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory, loop):
    from treesearch.policy.vllm import VLLMPolicy

    async def build():
        return VLLMPolicy(
            "smollm2",
            export_dir=tmp_path_factory.mktemp("smollm2-hf"),
            gpu_memory_utilization=0.3,
            max_model_len=2048,
            enforce_eager=True,
        )

    policy = loop.run_until_complete(build())
    yield policy
    policy.shutdown()


@needs_engine
def test_expansion_samples_steps(engine, loop):
    assert isinstance(engine, Policy)
    params = SamplingParams(temperature=0.8, max_new_tokens=48, stop=("\n",), seed=0)
    [steps] = loop.run_until_complete(engine.expand([make_state()], 4, params))
    assert len(steps) == 4
    assert len({s.text for s in steps}) >= 2
    for s in steps:
        assert s.text.strip()
        assert 1 <= s.num_tokens <= 48 and s.num_tokens == len(s.token_ids)
        assert math.isfinite(s.logprob) and s.logprob <= 0
        if s.finish_reason == "stop":
            assert find_stop(s.text, ("\n",)) == len(s.text)


@needs_engine
def test_counts_order_seeds_and_limits(engine, loop):
    states = [make_state(), make_state("What is 7 times 6?"), make_state(steps=("16 - 3 = 13.\n",))]
    params = SamplingParams(temperature=1.0, max_new_tokens=16, stop=("\n",), seed=5)
    a = loop.run_until_complete(engine.expand(states, [1, 3, 2], params))
    b = loop.run_until_complete(engine.expand(states, [1, 3, 2], params))
    assert [len(r) for r in a] == [1, 3, 2]
    assert [[s.text for s in r] for r in a] == [[s.text for s in r] for r in b]
    short = SamplingParams(temperature=1.0, max_new_tokens=5, seed=1)
    out = loop.run_until_complete(engine.expand(states, 2, short))
    for s in (s for r in out for s in r):
        assert s.num_tokens <= 5
        assert s.finish_reason in ("length", "eos")
    mixed = loop.run_until_complete(engine.expand(states[:2], 2, [params, short]))
    assert [len(r) for r in mixed] == [2, 2]
    assert all(s.num_tokens <= 5 for s in mixed[1])


@needs_engine
def test_complete_splits_into_steps(engine, loop):
    params = SamplingParams(temperature=0.7, max_new_tokens=128, stop=("\n",), seed=2)
    [steps] = loop.run_until_complete(engine.complete([make_state()], params))
    assert steps
    assert all(s.finish_reason == "stop" for s in steps[:-1])
    assert steps[-1].finish_reason in ("eos", "length")
    assert sum(s.num_tokens for s in steps) == len(sum((s.token_ids for s in steps), ()))
    for s in steps[:-1]:
        assert find_stop(s.text, ("\n",)) == len(s.text)


@needs_engine
def test_prefix_counters(engine, loop):
    before = engine.prompt_tokens_naive
    state = make_state()
    params = SamplingParams(temperature=0.8, max_new_tokens=4, seed=0)
    loop.run_until_complete(engine.expand([state], 8, params))
    length = len(engine._encode(state))
    assert engine.prompt_tokens_naive - before == 8 * length


class _ContractSamplingParams:
    """Stands in for vLLM's SamplingParams and enforces its greedy rule."""

    def __init__(self, n=1, temperature=1.0, **rest):
        if n > 1 and temperature == 0:
            raise ValueError("n must be 1 when using greedy sampling")  # vLLM's _verify_greedy_sampling
        self.n, self.temperature, self.rest = n, temperature, rest


class _FakeEngine:
    """Answers every request with `n` outputs of one step ("step one" and a newline)."""

    def __init__(self):
        self.requests = []

    async def generate(self, prompt, sampling, request_id):
        from types import SimpleNamespace

        self.requests.append(sampling)
        outputs = [SimpleNamespace(index=i, token_ids=[11, 12, 13], logprobs=None, text="step one\n",
                                   finish_reason="stop", stop_reason="\n") for i in range(sampling.n)]
        yield SimpleNamespace(outputs=outputs, num_cached_tokens=0)


def test_greedy_expansion_of_several_samples_keeps_vllms_contract_on_cpu(smollm2_tokenizer):
    """vLLM refuses n > 1 with temperature 0: the policy asks once and repeats the step, as
    the transformers backend's identical greedy rows give."""
    import itertools

    from treesearch.policy.vllm import VLLMPolicy

    policy = VLLMPolicy.__new__(VLLMPolicy)  # everything but the engine build
    policy._VSamplingParams, policy._TokensPrompt = _ContractSamplingParams, (lambda prompt_token_ids: prompt_token_ids)
    policy._final_only, policy.tokenizer, policy.engine = None, smollm2_tokenizer, _FakeEngine()
    policy._ids = itertools.count()
    policy.reset_counters()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16, stop=("\n",))
    (steps,) = asyncio.run(policy.expand([make_state()], 3, greedy))
    assert [s.text for s in steps] == ["step one\n"] * 3 and [r.n for r in policy.engine.requests] == [1]
    assert policy.generated_tokens == 9  # three samples' worth, as if each was generated
    (sampled,) = asyncio.run(policy.expand([make_state()], 3, SamplingParams(temperature=0.7, max_new_tokens=16,
                                                                          stop=("\n",), seed=1)))
    assert len(sampled) == 3 and policy.engine.requests[-1].n == 3
