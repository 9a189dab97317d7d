"""Throughput of the policy backends and of the engine around them, side by side.

    python benchmarks/throughput.py [--threads 2] [--repeats 3] [--sections ...] [--model smollm2]
        [--overhead-tokens 1000] [--overhead-step-tokens 4] [--job-repeats 3] [--vllm] [--quick] [--out FILE.json]

Sections (each ratio is measured in one run, same model, same machine):
  generation  tokens/s at batch 1, 8, 32, 64 (greedy, 64 new tokens, distinct GSM8K
              questions) of the OpenVINO backend (fp32 and int8 weights), HFPolicy, and
              the same model's plain transformers `generate`, taking turns per batch size;
              with --vllm also VLLMPolicy on vLLM's CPU build (here, and in tree and mcts)
  tree        the tree pattern: 8 states x 8 samples of a 32-token step, then 8 samples
              under each of 8 of those children (prompts that extend cached ones), for
              the OpenVINO backend with and without prefix caching and HFPolicy
  mcts        an in-process MCTS* job per engine: default options, 32 GSM8K problems in
              flight, 256 tokens each, a zero-cost critic (the policy engine is timed)
  job         the embedded default job (`treesearch search`: MCTS*, self-eval critic, 4
              GSM8K problems, 768 tokens each) with policy.backend=hf and 1 thread per
              actor (the previous default), hf with the default threads (2 per actor),
              and the default (auto: OpenVINO here), taking turns; wall time and
              generated tokens/s of each run, and medians
  prefix      prompt tokens encoded per expansion with KV reuse vs re-encoding the prompt
              for every sample
  batching    a real MCTS* search over GSM8K problems with 32 trees in flight vs one tree
              at a time (the per-node loop other engines use; timed on 8 of the
              problems): generated tokens/s
  overhead    the share of wall time with no model call running, in an MCTS* job of at
              least 10,000 nodes with the real model: 64 problems, 4-token steps and 8
              children per expansion (many nodes per model second: the engine's worst
              case), a zero-cost critic. Engine work done while a model call runs (in
              its thread) is not counted: this is the engine's cost on the critical path
Medians of `--repeats` runs are reported. Data: the bundled GSM8K test split.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from datetime import date

import torch

from treesearch import Budget, Runner
from treesearch.models import load_causal_lm
from treesearch.policy.hf import HFPolicy
from treesearch.tasks import GSM8KTask
from treesearch.types import SamplingParams, State


def states_for(task, problems):
    return [State(p, task.prompt(p)) for p in problems]


def generation(engines, model, tokenizer, states, batch_sizes, repeats, new_tokens=64):
    """tokens/s of each policy in `engines` (name -> Policy) and of plain `model.generate`,
    same prompts and batch size, taking turns within each repeat."""
    from treesearch.prompting import render_state

    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens, stop=())
    for policy in engines.values():  # warm-up
        asyncio.run(policy.expand(states[:2], 1, SamplingParams(temperature=0, max_new_tokens=4)))
    rows = []
    for batch in batch_sizes:
        rates: dict[str, list[float]] = {name: [] for name in engines}
        rates["plain_generate"] = []
        for _ in range(repeats):
            for name, policy in engines.items():
                before = policy.generated_tokens
                start = time.perf_counter()
                asyncio.run(policy.expand(states[:batch], 1, params))
                rates[name].append((policy.generated_tokens - before) / (time.perf_counter() - start))

            tokenizer.padding_side = "left"
            enc = tokenizer([render_state(tokenizer, s) for s in states[:batch]], return_tensors="pt", padding=True, add_special_tokens=False)
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1] :]
            produced = int((new != tokenizer.pad_token_id).sum())
            rates["plain_generate"].append(produced / (time.perf_counter() - start))
        row = {"batch": batch, **{f"{name}_tok_s": statistics.median(r) for name, r in rates.items()}}
        rows.append(row)
        print(f"  batch {batch:>3}: " + " | ".join(f"{name} {statistics.median(r):6.1f}" for name, r in rates.items()) + " tok/s", flush=True)
    return rows


def tree(engines, states, repeats, samples=8, step_tokens=32):
    """The tree pattern: `samples` samples of a step under each of 8 states, then under 8
    of the children; generated tokens/s and prompt tokens prefilled, per engine."""
    from dataclasses import replace

    params = SamplingParams(temperature=0.8, max_new_tokens=step_tokens, stop=(), seed=0)
    rows = []
    for name, policy in engines.items():
        rates, encoded, naive = [], 0, 0
        for r in range(repeats):
            roots = [replace(s, steps=(f"Step {r}: read the question.\n",)) for s in states[:8]]
            before = dict(policy.stats())
            start = time.perf_counter()
            first = asyncio.run(policy.expand(roots, samples, params))
            children = [replace(s, steps=s.steps + (steps[0].text,)) for s, steps in zip(roots, first)]
            asyncio.run(policy.expand(children, samples, params))
            seconds = time.perf_counter() - start
            after = policy.stats()
            rates.append((after["generated_tokens"] - before["generated_tokens"]) / seconds)
            encoded += after["prompt_tokens_encoded"] - before["prompt_tokens_encoded"]
            naive += after["prompt_tokens_naive"] - before["prompt_tokens_naive"]
        rows.append({"engine": name, "tok_s": statistics.median(rates), "prompt_tokens_encoded": encoded / repeats,
                     "prompt_tokens_naive": naive / repeats})
        print(f"  {name:>22}: {rows[-1]['tok_s']:6.1f} tok/s, prompt tokens prefilled {encoded / repeats:.0f} of {naive / repeats:.0f}", flush=True)
    return rows


def mcts(engines, task, problems, repeats, tokens_per_problem=256):
    """Generated tokens/s of an in-process MCTS* job (the default options, 32 trees in
    flight, a zero-cost critic so the policy engine is what is timed), per engine."""
    from critics import as_critic

    critic = as_critic(lambda s: 0.5)
    rows = []
    for name, policy in engines.items():
        rates, walls = [], []
        for _ in range(repeats):
            runner = Runner(policy, critic, task, trees_in_flight=len(problems), max_batch_size=64)
            start = time.perf_counter()
            results = asyncio.run(runner.run(problems, "mcts", Budget(generated_tokens=tokens_per_problem)))
            walls.append(time.perf_counter() - start)
            rates.append(sum(r.accounting.generated_tokens for r in results) / walls[-1])
        rows.append({"engine": name, "tok_s": statistics.median(rates), "wall_s": statistics.median(walls),
                     "mean_policy_batch": runner.stats.policy.mean_batch_size})
        print(f"  {name:>14}: {rows[-1]['tok_s']:6.1f} tok/s, {rows[-1]['wall_s']:6.1f} s "
              f"(mean policy batch {rows[-1]['mean_policy_batch']:.1f})", flush=True)
    return rows


JOB_ARMS = {
    # the previous default: transformers, 1 thread for the policy actor and 1 for the critic
    "hf_threads1": ["policy.backend=hf", "policy.threads=1", "critic.threads=1"],
    "hf_threads2": ["policy.backend=hf"],  # transformers with today's thread settings (2 and 2)
    "default": [],  # policy.backend=auto: OpenVINO on this CPU
}


def job(repeats, arms=JOB_ARMS):
    """The embedded default `treesearch search` job per arm (config overrides), taking
    turns, fresh run folders; the model is converted before the first run (its cost is
    reported apart). Wall time and generated tokens/s per run, and their medians."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from treesearch.ir.convert import ir_folder

    ir_folder("smollm2")
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for r in range(repeats):
        for name, overrides in arms.items():
            out = Path(tempfile.mkdtemp(prefix=f"job-{name}-"))
            command = [sys.executable, "-m", "treesearch.cli", "search", f"job.output_dir={out}", "job.progress=false", *overrides]
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds = time.perf_counter() - start
            metrics = json.loads((out / "metrics.json").read_text())
            session = metrics["last_session"]
            tokens = metrics["generated_tokens"]["total"]
            runs[name].append({"command_s": seconds, "wall_s": session["wall_seconds"], "tokens": tokens,
                               "tok_s": tokens / session["wall_seconds"],
                               "policy_call_s": session["policy"]["call_seconds"],
                               "critic_call_s": session["critic"]["call_seconds"]})
            print(f"  run {r + 1} {name:>12}: search wall {session['wall_seconds']:6.1f} s (command {seconds:6.1f} s), "
                  f"{tokens} tokens, {tokens / session['wall_seconds']:5.1f} tok/s", flush=True)
    summary = {name: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for name, rows in runs.items()}
    base, new = list(arms)[0], list(arms)[-1]
    summary["wall_ratio"] = summary[base]["wall_s"] / summary[new]["wall_s"]
    summary["command_ratio"] = summary[base]["command_s"] / summary[new]["command_s"]
    print(f"  median search wall {base} / {new}: {summary['wall_ratio']:.2f}x (whole command {summary['command_ratio']:.2f}x)")
    return {"arms": arms, "runs": runs, "summary": summary}


def prefix(policy, states, samples=(4, 8)):
    """Prompt tokens prefilled per expansion of n samples, with reuse vs naive."""
    rows = []
    for n in samples:
        enc0, naive0 = policy.prompt_tokens_encoded, policy.prompt_tokens_naive
        params = SamplingParams(temperature=0.8, max_new_tokens=32, stop=("\n",), seed=0)
        asyncio.run(policy.expand(states[:8], n, params))
        encoded = (policy.prompt_tokens_encoded - enc0) / 8
        naive = (policy.prompt_tokens_naive - naive0) / 8
        rows.append({"samples": n, "encoded_per_expansion": encoded, "naive_per_expansion": naive, "ratio": naive / encoded})
        print(f"  n={n}: {encoded:.0f} prompt tokens encoded per expansion vs {naive:.0f} naive ({naive / encoded:.1f}x fewer)", flush=True)
    return rows


def batching(policy, task, problems, repeats, tokens_per_problem):
    """Generated tokens/s of one MCTS* job with 32 trees in flight vs 1."""
    from critics import as_critic

    # a zero-cost critic isolates the policy side (the critic is not what is compared)
    critic = as_critic(lambda s: 0.5)
    options = dict(expansions=3, root_expansions=4, parallel_simulations=2, max_step_tokens=48, seed=0, temperature=0.7)
    rows = []
    for in_flight in (1, len(problems)):
        # one tree at a time: a rate, so 8 problems measure it as well as 32, in a quarter of the time
        subset = problems[: min(8, len(problems))] if in_flight == 1 else problems
        rates = []
        for _ in range(repeats):
            runner = Runner(policy, critic, task, trees_in_flight=in_flight, max_batch_size=64)
            start = time.perf_counter()
            results = asyncio.run(runner.run(subset, "mcts", Budget(generated_tokens=tokens_per_problem), **options))
            tokens = sum(r.accounting.generated_tokens for r in results)
            rates.append(tokens / (time.perf_counter() - start))
        rows.append({"trees_in_flight": in_flight, "tok_s": statistics.median(rates), "mean_policy_batch": runner.stats.policy.mean_batch_size})
        print(f"  {in_flight:>2} trees in flight: {rows[-1]['tok_s']:6.1f} tok/s (mean policy batch {rows[-1]['mean_policy_batch']:.1f})", flush=True)
    return {"rows": rows, "speedup": rows[1]["tok_s"] / rows[0]["tok_s"]}


def overhead(policy, task, problems, tokens_per_problem, step_tokens):
    """Share of wall time outside model calls in one big MCTS* job."""
    from critics import as_critic

    critic = as_critic(lambda s: 0.5)
    options = dict(expansions=8, root_expansions=8, parallel_simulations=4, max_step_tokens=step_tokens,
                   max_depth=64, seed=0, temperature=0.7)
    warm = Runner(policy, critic, task)  # compiled kernels and first calls, outside the measurement
    asyncio.run(warm.run(problems[:2], "mcts", Budget(generated_tokens=16), **options))
    runner = Runner(policy, critic, task, trees_in_flight=len(problems), max_batch_size=64)
    results = asyncio.run(runner.run(problems, "mcts", Budget(generated_tokens=tokens_per_problem), **options))
    stats = runner.stats
    row = {
        "problems": len(problems),
        "tokens_per_problem": tokens_per_problem,
        "step_tokens": step_tokens,
        "nodes": sum(len(r.tree) for r in results),
        "generated_tokens": sum(r.accounting.generated_tokens for r in results),
        "wall_s": stats.wall_seconds,
        "model_s": stats.model_seconds,
        "engine_s": stats.engine_seconds,
        "engine_share": stats.engine_seconds / stats.wall_seconds,
        "mean_policy_batch": stats.policy.mean_batch_size,
    }
    print(f"  {row['nodes']} nodes, {row['generated_tokens']} tokens in {row['wall_s']:.1f} s: engine "
          f"{row['engine_s']:.2f} s = {100 * row['engine_share']:.2f}% of wall time", flush=True)
    if row["nodes"] < 10_000:
        print(f"  note: {row['nodes']} nodes, fewer than the 10,000 the full-size figure needs", flush=True)
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    parser.add_argument("--sections", default=None, help="comma-separated; default all (all but job with --quick)")
    parser.add_argument("--model", default="smollm2", help="policy model (name, HF folder or hub id)")
    parser.add_argument("--overhead-tokens", type=int, default=1000, help="generated tokens per problem in the overhead job")
    parser.add_argument("--overhead-step-tokens", type=int, default=4, help="max tokens per step in the overhead job")
    parser.add_argument("--job-repeats", type=int, default=3, help="runs of the default job per backend")
    parser.add_argument("--no-openvino", action="store_true", help="leave the OpenVINO backend out")
    parser.add_argument("--vllm", action="store_true",
                        help="add vLLM (its CPU build, in its own environment: docs/install.md), in the CPU's "
                             "default dtype and in float32, to the generation, tree and mcts sections")
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    everything = "generation,tree,mcts,prefix,batching,overhead" + ("" if args.quick else ",job")
    sections = set((args.sections or everything).split(","))
    known = {"generation", "tree", "mcts", "prefix", "batching", "overhead", "job"}
    if sections - known:
        parser.error(f"unknown sections {sorted(sections - known)}; choose from {sorted(known)}")

    task = GSM8KTask()
    problems = task.load(limit=64)
    states = states_for(task, problems)
    model, tokenizer = load_causal_lm(args.model, device="cpu", threads=args.threads)
    policy = HFPolicy((model, tokenizer), threads=args.threads, max_batch_size=64)
    repeats = 1 if args.quick else args.repeats
    engines: dict = {}
    if not args.no_openvino and sections & {"generation", "tree", "mcts"}:
        from treesearch.policy.openvino import OpenVINOPolicy

        engines["openvino_fp32"] = OpenVINOPolicy(args.model, threads=args.threads, max_batch_size=64)
        if not args.quick:
            engines["openvino_int8"] = OpenVINOPolicy(args.model, weights="int8", threads=args.threads, max_batch_size=64)
    if args.vllm and sections & {"generation", "tree", "mcts"}:
        from treesearch.policy.vllm import VLLMPolicy, cpu_dtype

        engines[f"vllm_{cpu_dtype()}"] = VLLMPolicy(args.model, threads=args.threads, max_model_len=4096)
        if cpu_dtype() != "float32":
            engines["vllm_float32"] = VLLMPolicy(args.model, dtype="float32", threads=args.threads, max_model_len=4096)
    engines["hf_policy"] = policy
    report = {
        "date": str(date.today()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "model": args.model + (" (SmolLM2-135M-Instruct, GGUF Q4_1 dequantised to fp32)" if args.model == "smollm2" else "") + ", CPU",
    }
    if "generation" in sections:
        print("generation (greedy, 64 new tokens):")
        report["generation"] = generation(engines, model, tokenizer, states, (1, 8) if args.quick else (1, 8, 32, 64), repeats)
    if "tree" in sections:
        print("tree pattern (8 states x 8 samples, then 8 children x 8 samples, 32-token steps):")
        tree_engines = dict(engines)
        if "openvino_fp32" in engines:
            from treesearch.policy.openvino import OpenVINOPolicy

            tree_engines["openvino_fp32_no_prefix_cache"] = OpenVINOPolicy(
                args.model, threads=args.threads, max_batch_size=64, prefix_caching=False)
        report["tree"] = tree({k: tree_engines[k] for k in sorted(tree_engines)}, states, repeats)
    if "mcts" in sections:
        print("MCTS* job, default options, zero-cost critic:")
        count = 8 if args.quick else 32
        report["mcts"] = mcts(engines, task, problems[:count], repeats, 48 if args.quick else 256)
    if "prefix" in sections:
        print("prefix reuse:")
        report["prefix"] = prefix(policy, states)
    if "batching" in sections:
        print("cross-tree batching (MCTS*, zero-cost critic):")
        count = 8 if args.quick else 32
        report["batching"] = batching(policy, task, problems[:count], repeats if not args.quick else 1, 64 if args.quick else 192)
        print(f"  speedup: {report['batching']['speedup']:.1f}x")
    if "overhead" in sections:
        print(f"engine overhead (MCTS*, {args.overhead_step_tokens}-token steps, zero-cost critic):")
        report["overhead"] = overhead(policy, task, problems[:8] if args.quick else problems,
                                      48 if args.quick else args.overhead_tokens, args.overhead_step_tokens)
    if "job" in sections:
        print("the embedded default job (treesearch search):")
        report["job"] = job(args.job_repeats)
    for engine in engines.values():
        if hasattr(engine, "shutdown"):
            engine.shutdown()
    from pathlib import Path

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
