"""The GPU paths, checked on a real GPU in one command, with a pass/fail table and tok/s.

    python benchmarks/gpu_check.py [--model smollm2] [--prm FOLDER] [--out benchmarks/results/gpu_check.json]

Needs a CUDA GPU (and, for the vLLM rows, `pip install -e ".[vllm]"` in that environment).
Each check runs on its own; one failing does not stop the others:

  cuda               the device, its memory, bf16 support
  hf_policy          HFPolicy on CUDA in bf16: the model's weights on the GPU, a batch of 8
                     states x 4 samples, generated tokens/s
  vllm_policy        VLLMPolicy: sampled and greedy expansions (greedy with n > 1, which
                     vLLM refuses as such), a completion, and a second asyncio.run on the
                     same policy (the engine keeps its own loop); tokens/s
  vllm_self_eval     self_eval scored on the vLLM engine against transformers on CUDA (the
                     same model): values agree within 0.05
  vllm_loglik        the same for loglik
  vllm_rollout       a rollout critic that rolls out with the vLLM policy
  prm                (with --prm) the PRM critic on CUDA
  vllm_prm           (with --prm, a value-head folder) the PRM on vLLM's pooling runner: step
                     values agree with transformers' on CUDA within 0.01
  ray_job            a batch job through Ray with policy=vllm: the policy actor holds a GPU,
                     the self_eval critic runs on its engine (no critic actor), every problem
                     has a row and no error
  reload             the job's models reconfigured in place for a changed policy config (as a
                     self-training round does): the engine is rebuilt, the job runs again

Writes the table as JSON to `--out`; exits 1 when a check failed, 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUESTIONS = [
    "Janet has 16 eggs. She eats 3 and bakes with 4. How many are left?",
    "A shop sells 7 boxes of 6 pens. How many pens is that?",
    "Tom had 45 marbles and gave away 17. How many does he have now?",
    "A train travels 60 km per hour for 3 hours. How far does it go?",
    "There are 12 apples shared equally by 4 children. How many does each get?",
    "Sara reads 15 pages a day for 6 days. How many pages does she read?",
    "A class has 28 students and 13 are girls. How many are boys?",
    "A rope of 50 m is cut into pieces of 5 m. How many pieces are there?",
]


def states(count: int = 8, steps: tuple = ()):
    """States of `count` short word problems (GSM8K's prompt), after `steps`."""
    from treesearch.tasks import make_task
    from treesearch.types import Problem, State

    task = make_task("gsm8k")
    problems = [Problem(id=f"q{i}", question=question) for i, question in enumerate(QUESTIONS[:count])]
    return [State(problem=p, prompt=task.prompt(p), steps=tuple(steps)) for p in problems]


def sampling(temperature: float = 0.7, tokens: int = 48, seed: int = 0):
    from treesearch.types import SamplingParams

    return SamplingParams(temperature=temperature, max_new_tokens=tokens, stop=("\n",), seed=seed)


def timed_expand(policy, batch, samples: int, params) -> tuple[list, float]:
    started = time.perf_counter()
    out = asyncio.run(policy.expand(batch, samples, params))
    seconds = time.perf_counter() - started
    tokens = sum(step.num_tokens for row in out for step in row)
    return out, tokens / seconds


def check_cuda(ctx: dict) -> str:
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}"


def check_hf_policy(ctx: dict) -> str:
    from treesearch.policy import make_policy

    policy = make_policy("hf", model=ctx["model"], device="cuda", dtype="bfloat16")
    device = next(policy.model.parameters()).device
    assert device.type == "cuda", f"weights on {device}"
    timed_expand(policy, states(2), 2, sampling(tokens=8))  # warm-up
    out, rate = timed_expand(policy, states(8), 4, sampling())
    assert all(len(row) == 4 and all(step.num_tokens > 0 for step in row) for row in out)
    ctx["hf_policy"] = policy
    return f"{rate:.0f} generated tok/s at 8 states x 4 samples (bf16 on {device})"


def check_vllm_policy(ctx: dict) -> str:
    from treesearch.policy import make_policy

    policy = make_policy("vllm", model=ctx["model"], gpu_memory_utilization=0.4, max_model_len=2048)
    ctx["vllm_policy"] = policy
    timed_expand(policy, states(2), 2, sampling(tokens=8))  # warm-up (a first asyncio.run)
    out, rate = timed_expand(policy, states(8), 4, sampling())  # a second one: the engine keeps its loop
    assert all(len(row) == 4 for row in out)
    greedy = asyncio.run(policy.expand(states(2), 3, sampling(temperature=0.0)))
    assert all(len({step.text for step in row}) == 1 and len(row) == 3 for row in greedy), "greedy: one step, 3 times"
    (done,) = asyncio.run(policy.complete(states(1), sampling(tokens=128)))
    assert done and done[-1].finish_reason in ("eos", "length", "stop")
    return f"{rate:.0f} generated tok/s at 8 states x 4 samples; greedy n=3 and a completion pass"


def _agreement(ctx: dict, name: str) -> str:
    import numpy as np

    from critics import make_critic
    from treesearch.models import load_causal_lm

    batch = states(8, steps=("16 - 3 - 4 = 9 eggs are left.\n",))
    on_engine = make_critic(name, model=ctx["vllm_policy"])
    on_cuda = make_critic(name, model=load_causal_lm(ctx["model"], device="cuda", dtype="float32"))
    started = time.perf_counter()
    engine_values = asyncio.run(on_engine.score(batch))
    seconds = time.perf_counter() - started
    cuda_values = asyncio.run(on_cuda.score(batch))
    gap = float(np.max(np.abs(engine_values - cuda_values)))
    assert gap < 0.05, f"values differ by {gap:.3f}: {engine_values} vs {cuda_values}"
    return f"largest difference {gap:.4f} over 8 states; {seconds * 1000 / len(batch):.0f} ms per state on the engine"


def check_vllm_self_eval(ctx: dict) -> str:
    return _agreement(ctx, "self_eval")


def check_vllm_loglik(ctx: dict) -> str:
    return _agreement(ctx, "loglik")


def check_vllm_rollout(ctx: dict) -> str:
    import dataclasses

    from critics import make_critic
    from treesearch.tasks import make_task

    critic = make_critic("rollout", policy=ctx["vllm_policy"], task=make_task("gsm8k"), k=4, max_new_tokens=128)
    batch = [dataclasses.replace(s, problem=dataclasses.replace(s.problem, gold="9")) for s in states(4)]
    values, tokens = asyncio.run(critic.score_with_cost(batch))
    assert ((values >= 0) & (values <= 1)).all() and (tokens > 0).all()
    return f"values {[round(float(v), 2) for v in values]}, {int(tokens.sum())} rollout tokens"


def check_prm(ctx: dict) -> str:
    from critics import make_critic

    critic = make_critic("prm", model=ctx["prm"], device="cuda")
    values = asyncio.run(critic.score(states(4, steps=("16 - 3 - 4 = 9 eggs are left.\n",))))
    assert ((values >= 0) & (values <= 1)).all()
    return f"values {[round(float(v), 2) for v in values]}"


def check_vllm_prm(ctx: dict) -> str:
    """A value-head PRM on vLLM's pooling runner against the same PRM in transformers on CUDA."""
    import numpy as np

    from critics.prm import PRMCritic

    batch = states(8, steps=("16 - 3 - 4 = 9 eggs are left.\n", "9 * 2 = 18 dollars.\n"))
    on_cuda = PRMCritic(ctx["prm"], backend="hf", device="cuda", dtype="float32")
    served = PRMCritic(ctx["prm"], backend="vllm", dtype="float32")
    try:
        started = time.perf_counter()
        got = asyncio.run(served.step_values(batch))
        seconds = time.perf_counter() - started
        want = asyncio.run(on_cuda.step_values(batch))
    finally:
        served.shutdown()
    gap = float(np.max(np.abs(np.concatenate([np.subtract(a, b) for a, b in zip(got, want)]))))
    assert gap < 0.01, f"step values differ by {gap:.4f}"
    return f"largest step-value difference {gap:.5f} over 8 states x 2 steps; {seconds * 1000 / len(batch):.0f} ms per state"


def _job_overrides(ctx: dict, out: Path, *extra: str) -> list[str]:
    return ["policy=vllm", f"policy.model={ctx['model']}", "policy.gpu_memory_utilization=0.4",
            "policy.max_model_len=2048", "task.limit=4", "search.budget.generated_tokens=256",
            f"job.output_dir={out}", "job.progress=false", *extra]


def check_ray_job(ctx: dict) -> str:
    import pyarrow.parquet as pq
    import ray

    from treesearch.config import compose
    from treesearch.jobs import run_job, start_models

    for key in ("vllm_policy", "hf_policy"):  # give their GPU memory back first
        policy = ctx.pop(key, None)
        if policy is not None and hasattr(policy, "shutdown"):
            policy.shutdown()
    cfg = compose("search", _job_overrides(ctx, ctx["workdir"] / "job"))
    assert cfg.cluster.policy.num_gpus == 1
    models = start_models(cfg)
    ctx["models"] = models
    models.ready()
    assert models.critic is None and models.shared is not None, "the self_eval critic runs on the policy's engine"
    gpus = ray.get(models.policy.actors[0].__ray_call__.remote(lambda self: ray.get_gpu_ids()))
    started = time.perf_counter()
    folder = run_job(cfg, models)
    seconds = time.perf_counter() - started
    rows = pq.read_table(folder / "results.parquet").to_pylist()
    assert len(rows) == 4 and not any(r["error"] for r in rows), [r["error"] for r in rows]
    tokens = sum(r["generated_tokens"] or 0 for r in rows)
    return f"policy actor GPUs {gpus}; 4 problems in {seconds:.1f} s, {tokens / seconds:.0f} generated tok/s"


def check_reload(ctx: dict) -> str:
    import pyarrow.parquet as pq

    from treesearch.config import compose
    from treesearch.jobs import run_job

    models = ctx["models"]
    cfg = compose("search", _job_overrides(ctx, ctx["workdir"] / "job-reloaded", "policy.max_model_len=1536"))
    started = time.perf_counter()
    folder = run_job(cfg, models)  # reconfigures the pools in place: the engine is rebuilt
    rows = pq.read_table(folder / "results.parquet").to_pylist()
    assert len(rows) == 4 and not any(r["error"] for r in rows)
    return f"reloaded and ran 4 problems in {time.perf_counter() - started:.1f} s"


CHECKS: list[tuple[str, Callable[[dict], str], str]] = [
    ("cuda", check_cuda, ""),
    ("hf_policy", check_hf_policy, ""),
    ("vllm_policy", check_vllm_policy, "vllm"),
    ("vllm_self_eval", check_vllm_self_eval, "vllm_policy"),
    ("vllm_loglik", check_vllm_loglik, "vllm_policy"),
    ("vllm_rollout", check_vllm_rollout, "vllm_policy"),
    ("prm", check_prm, "prm"),
    ("vllm_prm", check_vllm_prm, "prm"),
    ("ray_job", check_ray_job, "vllm"),
    ("reload", check_reload, "models"),
]


def run_checks(ctx: dict, checks=CHECKS) -> list[dict]:
    """Each check in turn: pass, fail (with the error) or skip (with what it needs)."""
    rows = []
    for name, check, needs in checks:
        if needs and not ctx.get(needs):
            rows.append({"check": name, "status": "skip", "detail": f"needs {needs}", "seconds": 0.0})
            continue
        started = time.perf_counter()
        try:
            detail, status = check(ctx), "pass"
        except Exception as err:  # report it and go on with the others
            detail, status = f"{type(err).__name__}: {err}".splitlines()[0][:300], "fail"
            ctx.setdefault("tracebacks", {})[name] = traceback.format_exc()
        rows.append({"check": name, "status": status, "detail": detail,
                     "seconds": round(time.perf_counter() - started, 1)})
        print(f"{name:>15}  {status:4}  {detail}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prm", default=None, help="a PRM folder for the prm row")
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = parser.parse_args(argv)
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing was checked", file=sys.stderr)
        return 2
    ctx = {"model": args.model, "prm": args.prm, "vllm": importlib.util.find_spec("vllm") is not None,
           "workdir": Path(tempfile.mkdtemp(prefix="treesearch-gpu-check-"))}
    try:
        rows = run_checks(ctx)
    finally:
        if ctx.get("models") is not None:
            ctx["models"].shutdown()
    report = {"command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "checks": rows, "tracebacks": ctx.get("tracebacks", {})}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 1 if any(r["status"] == "fail" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
