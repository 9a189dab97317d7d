"""The OpenVINO backend: the IR built from PyTorch weights against transformers, the
conversion cache, and the Policy contract side by side with HFPolicy (tiny random models
built from real configs); one parity check on the real SmolLM2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from treesearch.policy import Policy, make_policy
from treesearch.policy.hf import HFPolicy
from treesearch.types import SamplingParams

from tests.policy_cases import ends_at_first_valid_stop, jolt, make_state, run

ov = pytest.importorskip("openvino", reason="openvino is a dependency of treesearch; install the project")


def tiny_config(kind: str, vocab: int):
    """A 2-layer config of a supported architecture with grouped query attention."""
    from transformers import AutoConfig

    extra = {"qwen2": {"use_sliding_window": False}, "qwen3": {"use_sliding_window": False, "head_dim": 16}}
    return AutoConfig.for_model(
        kind,
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        **extra.get(kind, {}),
    )


def ir_logits(model, input_ids, attention_mask, weights="fp32"):
    """Run the IR of `model` as a plain stateful model: prefill, then one decode step of
    each row's greedy token; returns both logits."""
    from treesearch.ir.graph import build_model

    compiled = ov.Core().compile_model(
        build_model(model, weights), "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "INFERENCE_NUM_THREADS": 1},
    )
    request = compiled.create_infer_request()
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    beams = np.arange(len(input_ids), dtype=np.int32)
    first = request.infer({"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
                           "position_ids": positions.numpy(), "beam_idx": beams})["logits"].copy()
    token = first[:, -1].argmax(-1)[:, None].astype(np.int64)
    mask = np.concatenate([attention_mask.numpy(), np.ones_like(token)], axis=1)
    second = request.infer({"input_ids": token, "attention_mask": mask,
                            "position_ids": positions[:, -1:].numpy() + 1, "beam_idx": beams})["logits"].copy()
    return first, second, torch.tensor(token)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_ir_matches_transformers(kind, smollm2_tokenizer):
    """Prefill with left padding and one cached decode step give transformers' logits."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = jolt(AutoModelForCausalLM.from_config(tiny_config(kind, len(smollm2_tokenizer))).eval(), 0.05)
    if kind == "qwen2":  # qwen2 has q/k/v biases: make them matter
        with torch.no_grad():
            model.model.layers[0].self_attn.q_proj.bias.normal_(0, 0.5)
    enc = smollm2_tokenizer(["What is 2 + 3?", "Tom has four apples and eats one of them."],
                            return_tensors="pt", padding=True, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any(), "the batch must be padded for this test to mean anything"
    first, second, token = ir_logits(model, ids, mask)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref_first = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()
        full_mask = torch.cat([mask, torch.ones_like(token)], 1)
        full_pos = torch.cat([positions, positions[:, -1:] + 1], 1)
        ref_second = model(input_ids=torch.cat([ids, token], 1), attention_mask=full_mask, position_ids=full_pos).logits[:, -1:].numpy()
    keep = mask.bool().numpy()
    assert np.abs(first[keep] - ref_first[keep]).max() < 1e-4
    assert np.abs(second - ref_second).max() < 1e-4


def test_int8_weights_are_close_and_small(smollm2_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from treesearch.ir.graph import quantize_rows

    weight = np.random.default_rng(0).normal(size=(8, 32)).astype(np.float32)
    q, zero, scale = quantize_rows(weight)
    assert q.dtype == np.uint8 and np.abs((q.astype(np.float32) - zero) * scale - weight).max() <= scale.max() / 2 + 1e-6
    torch.manual_seed(0)
    model = jolt(AutoModelForCausalLM.from_config(tiny_config("llama", len(smollm2_tokenizer))).eval(), 0.05)
    enc = smollm2_tokenizer(["What is 2 + 3?"], return_tensors="pt")
    exact, _, _ = ir_logits(model, enc["input_ids"], enc["attention_mask"])
    small, _, _ = ir_logits(model, enc["input_ids"], enc["attention_mask"], "int8")
    assert 0 < np.abs(exact - small).max() < 0.05 * np.abs(exact).max()


def test_unsupported_architectures_are_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    from treesearch.ir.graph import build_model

    with pytest.raises(ValueError, match="'gpt2'.*policy.backend=hf"):
        build_model(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)))


# -- conversion -----------------------------------------------------------------------


def test_conversion_is_cached_by_checkpoint(tiny_model_dir, tmp_path):
    from treesearch.ir.convert import MARKER, ir_folder

    first = ir_folder(str(tiny_model_dir), "fp32", tmp_path)
    stamp = (first / MARKER).stat().st_mtime_ns
    assert ir_folder(str(tiny_model_dir), "fp32", tmp_path) == first
    assert (first / MARKER).stat().st_mtime_ns == stamp, "converted twice"
    assert ir_folder(str(first)) == first  # an IR folder is used as it is
    assert ir_folder(str(tiny_model_dir), "int8", tmp_path) != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".converting")]
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        ir_folder(str(tmp_path / "no-such-folder"), "fp32", tmp_path)
    with pytest.raises(ValueError, match="weights"):
        ir_folder(str(tiny_model_dir), "int3", tmp_path)


@pytest.fixture(scope="module")
def lively_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with jolted weights, saved as a checkpoint (as `train_sft` writes one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("lively")
    jolt(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pair(lively_dir, tmp_path_factory):
    """The same checkpoint on both backends."""
    cache = tmp_path_factory.mktemp("ir-cache")
    engine = make_policy("openvino", model=str(lively_dir), threads=1, cache_dir=str(cache))
    yield engine, HFPolicy(str(lively_dir), device="cpu")
    engine.shutdown()


# -- the Policy contract, side by side with HFPolicy ----------------------------------------


def test_is_a_policy(pair):
    engine, _ = pair
    assert isinstance(engine, Policy)


def test_greedy_steps_equal_hf(pair):
    """fp32: the same greedy steps as transformers, token for token, batched or not."""
    engine, hf = pair
    states = [make_state(i, steps=("Let me think.\n",) * (i % 3)) for i in range(8)]
    params = SamplingParams(temperature=0, max_new_tokens=20, stop=("\n",))
    ours, theirs = run(engine.expand(states, 1, params)), run(hf.expand(states, 1, params))
    assert [r[0].token_ids for r in ours] == [r[0].token_ids for r in theirs]
    assert [r[0].text for r in ours] == [r[0].text for r in theirs]
    assert [r[0].finish_reason for r in ours] == [r[0].finish_reason for r in theirs]
    for a, b in zip(ours, theirs):
        assert math.isclose(a[0].logprob, b[0].logprob, rel_tol=1e-3, abs_tol=1e-3)
    assert len({r[0].text for r in ours}) > 1
    stops = ("e", "\n")
    params = SamplingParams(temperature=0, max_new_tokens=24, stop=stops)
    ours, theirs = run(engine.expand(states, 1, params)), run(hf.expand(states, 1, params))
    assert [r[0].text for r in ours] == [r[0].text for r in theirs]
    assert sum(r[0].finish_reason == "stop" for r in ours) >= 4


def test_sampled_steps_keep_the_step_rules(pair):
    engine, hf = pair
    stops = ("e", "\n")
    params = SamplingParams(temperature=1.0, max_new_tokens=24, stop=stops, seed=1)
    out = run(engine.expand([make_state(i) for i in range(3)], [1, 3, 2], params))
    assert [len(r) for r in out] == [1, 3, 2]
    steps = [s for row in out for s in row]
    assert sum(s.finish_reason == "stop" for s in steps) >= 3
    for s in steps:
        assert s.text.strip(), "no whitespace-only steps"
        assert 1 <= s.num_tokens == len(s.token_ids) <= 24
        if s.finish_reason == "stop":
            assert ends_at_first_valid_stop(s.text, stops), s.text
        elif s.finish_reason == "length":
            assert s.num_tokens == 24
    # logprob is the raw log-probability of the step's tokens, as transformers scores them
    state = make_state(1)
    step = out[1][0]
    prompt = hf._encode(state)
    with torch.no_grad():
        logits = hf.model(input_ids=torch.tensor([prompt + list(step.token_ids)])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    scored = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(step.token_ids))
    assert math.isclose(step.logprob, scored, rel_tol=1e-3, abs_tol=1e-3)


def test_seeds_reproduce_per_prompt_and_sample(pair):
    engine, _ = pair
    states = [make_state(0), make_state(1)]
    # a sharpened distribution: the random model's flat one makes a sample hang on the
    # last bits of its logits, which a prompt served from the prefix cache may change
    params = SamplingParams(temperature=0.3, top_p=0.9, max_new_tokens=12, seed=3)
    a, b = run(engine.expand(states, 3, params)), run(engine.expand(states, 3, params))
    assert [[(s.text, s.token_ids) for s in r] for r in a] == [[(s.text, s.token_ids) for s in r] for r in b]
    # a prompt served from the prefix cache may change the last bits of a logprob
    assert all(math.isclose(x.logprob, y.logprob, rel_tol=1e-4) for r, q in zip(a, b) for x, y in zip(r, q))
    alone = run(engine.expand([states[1]], 2, params))[0]
    assert [s.token_ids for s in alone] == [s.token_ids for s in a[1][:2]], "sample j does not depend on the batch"
    assert len({s.token_ids for s in a[0]}) > 1
    other = run(engine.expand(states, 3, SamplingParams(temperature=0.3, top_p=0.9, max_new_tokens=12, seed=4)))
    assert [s.token_ids for r in a for s in r] != [s.token_ids for r in other for s in r]


def test_limits_and_completions(pair):
    engine, hf = pair
    params = SamplingParams(temperature=1.0, max_new_tokens=5, seed=0)
    out = run(engine.expand([make_state(0), make_state(1)], 3, params))
    for s in (s for row in out for s in row):
        assert s.num_tokens <= 5
        assert s.finish_reason == "length" or (s.finish_reason == "eos" and s.num_tokens < 5)
    whole = SamplingParams(temperature=1.0, max_new_tokens=40, seed=11)
    split = SamplingParams(temperature=1.0, max_new_tokens=40, seed=11, stop=("e", "\n"))
    [[one]] = run(engine.complete([make_state(5)], whole))
    [steps] = run(engine.complete([make_state(5)], split))
    assert len(steps) > 1 and "".join(s.text for s in steps) == one.text
    assert sum((s.token_ids for s in steps), ()) == one.token_ids
    assert math.isclose(sum(s.logprob for s in steps), one.logprob, rel_tol=1e-5)
    greedy = SamplingParams(temperature=0, max_new_tokens=30)
    assert run(engine.complete([make_state(2)], greedy))[0][0].token_ids == run(hf.complete([make_state(2)], greedy))[0][0].token_ids


def test_many_concurrent_calls_and_accounting(pair):
    """Calls from many trees at once share the engine; prompt tokens of a parent's cached
    blocks are not counted again."""
    import asyncio

    engine, _ = pair
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=2)

    async def many():
        return await asyncio.gather(*(engine.expand([make_state(i)], 2, params) for i in range(8)))

    before = engine.stats()
    out = run(many())
    assert [len(r[0]) for r in out] == [2] * 8
    after = engine.stats()
    assert after["calls"] - before["calls"] == 8
    assert after["generated_tokens"] - before["generated_tokens"] == sum(s.num_tokens for r in out for s in r[0])
    naive = after["prompt_tokens_naive"] - before["prompt_tokens_naive"]
    encoded = after["prompt_tokens_encoded"] - before["prompt_tokens_encoded"]
    assert 0 < encoded < naive
    assert engine.model_seconds > 0
    # occupancy: every step ran at least one request, and the 16 requests shared steps
    steps = after["engine_steps"] - before["engine_steps"]
    assert 0 < steps < after["sequence_steps"] - before["sequence_steps"] <= 16 * steps


def test_a_cancelled_call_frees_the_engine(pair):
    """A caller that gives up (a timeout) does not wedge the engine: its requests are
    stopped and the next call is served."""
    import asyncio

    engine, _ = pair
    long = SamplingParams(temperature=1.0, max_new_tokens=400, seed=0)

    async def give_up():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.expand([make_state(i) for i in range(4)], 2, long), timeout=0.05)

    run(give_up())
    [[step]] = run(engine.expand([make_state(0)], 1, SamplingParams(temperature=0, max_new_tokens=4)))
    assert step.num_tokens <= 4


def test_shutdown_refuses_new_work(lively_dir, tmp_path):
    engine = make_policy("openvino", model=str(lively_dir), threads=1, cache_dir=str(tmp_path))
    run(engine.expand([make_state(0)], 1, SamplingParams(temperature=0, max_new_tokens=3)))
    engine.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        run(engine.expand([make_state(0)], 1, SamplingParams(temperature=0, max_new_tokens=3)))


def test_bad_options_are_named(lively_dir, tmp_path):
    with pytest.raises(ValueError, match="max_batch_size"):
        make_policy("openvino", model=str(lively_dir), max_batch_size=0, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="weights"):
        make_policy("openvino", model=str(lively_dir), weights="int3", cache_dir=str(tmp_path))


# -- the real model -------------------------------------------------------------------


@pytest.mark.slow  # loads a model or runs the CLI in a subprocess
def test_real_smollm2_greedy_steps_equal_hf(tmp_path_factory):
    from treesearch.tasks import GSM8KTask
    from treesearch.types import State

    task = GSM8KTask()
    states = [State(p, task.prompt(p)) for p in task.load(limit=6)]
    engine = make_policy("openvino", model="smollm2", threads=1)
    try:
        params = SamplingParams(temperature=0, max_new_tokens=40, stop=(task.step_delimiter,))
        ours = run(engine.expand(states, 1, params))
        theirs = run(HFPolicy("smollm2", device="cpu").expand(states, 1, params))
        assert [r[0].token_ids for r in ours] == [r[0].token_ids for r in theirs]
        assert [r[0].text for r in ours] == [r[0].text for r in theirs]
    finally:
        engine.shutdown()
