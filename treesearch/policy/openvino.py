"""The OpenVINO GenAI backend: continuous batching with prefix caching, for CPUs.

One engine thread owns an `openvino_genai.ContinuousBatchingPipeline` (its calls are not
re-entrant) and feeds it: every sample is one request with its own seed, added as soon as
it arrives, so requests from many trees and many `expand` calls are decoded together and
a request that finishes frees its slot at once. The pipeline's prefix cache serves the
prompt blocks a parent state already computed.

Steps have the semantics every backend shares (`treesearch.policy.steps`): prompts are
rendered by `render_state` and tokenized by the model's Hugging Face tokenizer, as in the
transformers backend; stop strings are matched by this backend on the decoded text after
each generated token (the pipeline's own stop strings strip trailing newlines and match
whitespace-only steps), and the sample is stopped there; `logprob` is the raw
log-probability (the pipeline's `logprobs=1` mode, before temperature and top-p).

Models are converted once to an IR folder by `treesearch.ir.convert`. With fp32 weights
and fp32 inference the greedy steps equal `HFPolicy`'s; "int8" weights are faster and
close but not identical.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import os
import queue
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from treesearch.policy.base import BackendCounters, ParamsArg, per_state_counts, per_state_params
from treesearch.policy.cpu_turns import CPU_TURNS
from treesearch.policy.prefix_staging import PrefixStager
from treesearch.policy.steps import eos_token_ids, find_stop, finished_step, request_seed, split_completion
from treesearch.prompting import encode_state
from treesearch.types import SamplingParams, State, Step

INSTALL_HINT = "pip install openvino-genai (a dependency of treesearch)"
# The CPU plugin's KV-cache block, in tokens: prefix caching reuses whole blocks.
CPU_BLOCK_TOKENS = 32


@dataclass
class _Plan:
    """One state's part of a call: the prompt tokens it prefills (estimated), how many
    steps it asked for, its params, and the requests drawn for it (one when greedy)."""

    encoded: int
    count: int
    params: SamplingParams
    samples: list["_Sample"]


@dataclass
class _Sample:
    """One request: a prompt, its generation settings and what came back so far."""

    prompt: list[int]
    config: Any  # openvino_genai.GenerationConfig
    stops: tuple[str, ...]
    future: concurrent.futures.Future
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish: Optional[str] = None
    handle: Any = None


def _engine_counter(name: str) -> property:
    """A counter of the policy that the engine thread keeps (read and reset through it)."""
    return property(lambda self: getattr(self._engine, name), lambda self, value: setattr(self._engine, name, value))


class OpenVINOPolicy(BackendCounters):
    """A `Policy` on OpenVINO GenAI's continuous-batching pipeline (CPU).

    `model`: "smollm2", a Hugging Face folder (e.g. a `train_sft` checkpoint) or an IR
    folder; converted once (`treesearch.ir.convert.ir_folder`). `weights`: "fp32"
    (exact), "fp16" or "int8". `threads`: the inference thread count. `cache_gb`: the
    KV cache's size in GiB (whole, at least 1). `max_batch_size`: the most sequences
    decoded at once. `device`: "auto" or "cpu". `dtype`: the CPU's inference precision,
    "auto"/"float32" (parity with transformers) or "bfloat16" (faster on CPUs that have
    it). `prefix_caching`: reuse the KV blocks of earlier prompts. `stage_prefixes`: with
    prefix caching, requests that arrive together and share a prompt prefix wait for the
    first of them to compute it (`treesearch.policy.prefix_staging`), so it is computed once.

    The engine batches continuously: a call's requests join those running before the next
    step, so it serves up to `max_batch_size` calls at once (`calls_in_flight`).

    Counters: `prompt_tokens_naive`, `prompt_tokens_encoded` (estimated, as the pipeline
    does not report it: see `_PrefixEstimate`), `generated_tokens`, `calls`,
    `model_seconds` (time in the pipeline's steps), `engine_steps` (steps taken) and
    `sequence_steps` (requests running, summed over the steps: divided by `engine_steps`,
    how full its batches were kept). A request whose caller is cancelled
    is stopped at the next step; one that fails fails alone.
    """

    COUNTERS = BackendCounters.COUNTERS + ("model_seconds", "engine_steps", "sequence_steps")

    def __init__(
        self,
        model: Union[str, os.PathLike] = "smollm2",
        *,
        weights: str = "fp32",
        threads: Optional[int] = None,
        cache_gb: float = 1.0,
        max_batch_size: int = 64,
        device: str = "auto",
        dtype: Any = "auto",
        prefix_caching: bool = True,
        stage_prefixes: bool = True,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
    ):
        try:
            import openvino_genai
        except ImportError as err:
            raise ImportError(f"OpenVINOPolicy needs openvino-genai: {INSTALL_HINT}") from err
        from treesearch.ir.convert import ir_folder
        from treesearch.models import load_tokenizer

        if max_batch_size < 1:
            raise ValueError(f"OpenVINOPolicy.max_batch_size must be >= 1, got {max_batch_size}")
        if cache_gb <= 0:
            raise ValueError(f"OpenVINOPolicy.cache_gb must be > 0, got {cache_gb}")
        if str(device).lower() not in ("auto", "cpu"):
            raise ValueError(f"the openvino backend runs on the CPU, not device={device!r}; use policy.backend=hf or vllm there")
        self.folder = ir_folder(model, weights, cache_dir)
        self.tokenizer = load_tokenizer(self.folder)
        self.eos_ids = eos_token_ids(_generation_config(self.folder), self.tokenizer)
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = bool(prefix_caching)
        scheduler.cache_size = max(1, int(round(cache_gb)))
        scheduler.max_num_seqs = int(max_batch_size)
        self.calls_in_flight = int(max_batch_size)
        scheduler.max_num_batched_tokens = max(scheduler.max_num_batched_tokens, 2048)
        properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _precision(dtype), "KV_CACHE_PRECISION": "f32"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        start = time.perf_counter()
        pipeline = openvino_genai.ContinuousBatchingPipeline(str(self.folder), scheduler, "CPU", properties)
        self.load_seconds = time.perf_counter() - start
        self._genai = openvino_genai
        blocks = _cache_blocks(self.folder, scheduler.cache_size)
        self._prefix = _PrefixEstimate(blocks, bool(prefix_caching))
        stager = PrefixStager(CPU_BLOCK_TOKENS, blocks) if prefix_caching and stage_prefixes else None
        self._engine = _Engine(pipeline, self.tokenizer, self.eos_ids, stager)
        self.reset_counters()

    model_seconds = _engine_counter("step_seconds")
    engine_steps = _engine_counter("steps")
    sequence_steps = _engine_counter("sequence_steps")

    def shutdown(self) -> None:
        """Stop the engine thread (pending requests fail) and free the pipeline."""
        self._engine.close()

    # -- Policy protocol ------------------------------------------------------------------

    async def expand(
        self, states: Sequence[State], n: Union[int, Sequence[int]], params: ParamsArg
    ) -> list[list[Step]]:
        """For each state, `n` (or `n[i]`) samples of the next step, in order, sampled with
        `params` (or `params[i]`)."""
        counts = per_state_counts(states, n)
        per_state = per_state_params(states, params)
        self.calls += 1
        plans = [self._plan(s, c, p, p.stop) for s, c, p in zip(states, counts, per_state)]
        await self._run(plans)
        out = []
        for plan in plans:
            p = plan.params
            steps = [finished_step(x.text, x.ids, x.logprobs, x.finish, p.stop) for x in plan.samples]
            steps = steps * plan.count if p.greedy else steps  # greedy samples are all the same
            self.generated_tokens += sum(x.num_tokens for x in steps)
            steps[0] = dataclasses.replace(steps[0], prompt_tokens=plan.encoded)
            out.append(steps)
        return out

    async def complete(self, states: Sequence[State], params: ParamsArg) -> list[list[Step]]:
        """For each state, one completion to EOS or `max_new_tokens`, split into steps."""
        per_state = per_state_params(states, params)
        self.calls += 1
        plans = [self._plan(s, 1, p, ()) for s, p in zip(states, per_state)]
        await self._run(plans)
        out = []
        for plan in plans:
            [x] = plan.samples
            self.generated_tokens += len(x.ids)
            steps = split_completion(self.tokenizer, x.text, x.ids, x.logprobs, x.finish, plan.params.stop)
            steps[0] = dataclasses.replace(steps[0], prompt_tokens=plan.encoded)
            out.append(steps)
        return out

    # -- internals ------------------------------------------------------------------------

    def _encode(self, state: State) -> list[int]:
        return encode_state(self.tokenizer, state)

    def _config(self, params: SamplingParams, seed: int):
        config = self._genai.GenerationConfig()
        config.max_new_tokens = int(params.max_new_tokens)
        config.logprobs = 1  # raw log-probabilities of the sampled tokens
        config.stop_token_ids = set(self.eos_ids)
        if params.greedy:
            config.do_sample = False
        else:
            config.do_sample = True
            config.temperature = float(params.temperature)
            config.top_p = float(params.top_p)
            config.rng_seed = int(seed) % (2**32)
        return config

    def _plan(self, state: State, count: int, params: SamplingParams, stops: Sequence[str]) -> _Plan:
        """One state's requests: one per sample, seeded by prompt and index (one for
        greedy); generation stops at `stops`."""
        prompt = self._encode(state)
        draws = 1 if params.greedy else count
        encoded = self._prefix.encode(prompt, draws)
        self.prompt_tokens_naive += len(prompt) * count
        self.prompt_tokens_encoded += encoded
        base = params.seed if params.seed is not None else random.SystemRandom().getrandbits(62)
        samples = [
            _Sample(prompt, self._config(params, request_seed(base, prompt, j)), tuple(stops), concurrent.futures.Future())
            for j in range(draws)
        ]
        return _Plan(encoded, count, params, samples)

    async def _run(self, plans: list[_Plan]) -> None:
        """Hand every request of one call to the engine at once (so they start in the same
        step) and wait for them (a failed request raises here)."""
        samples = [x for plan in plans for x in plan.samples]
        self._engine.submit(samples)
        for x in samples:
            await asyncio.wrap_future(x.future)


# `pipeline.step` holds Python's GIL for the whole step, so the searches that send requests
# run only while the engine thread waits. After a step that ended requests it waits for
# their callers' next requests: up to HANDOFF_FIRST_S for the first, HANDOFF_GAP_S between
# the next ones, HANDOFF_MAX_S in all (a step of a full batch takes about 100 ms here).
HANDOFF_FIRST_S = 0.010
HANDOFF_GAP_S = 0.003
HANDOFF_MAX_S = 0.020


class _Engine:
    """The thread that owns the pipeline: adds requests as they arrive, steps the
    pipeline while any is running, reads each request's new tokens after every step and
    ends a request at its stop string, end of sequence or token limit. With a `stager`, a
    request that shares a prefix with one being prefilled waits in `held` until it is."""

    def __init__(self, pipeline: Any, tokenizer: Any, eos_ids: set[int], stager: Optional[PrefixStager] = None):
        import numpy as np
        import openvino as ov
        import openvino_genai

        self._np, self._ov = np, ov
        self._running = openvino_genai.GenerationStatus.RUNNING
        self.pipeline = pipeline
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.step_seconds = 0.0
        self.steps = 0  # pipeline steps taken
        self.sequence_steps = 0  # requests running, summed over the steps (occupancy)
        self.stager = stager
        self.held: list[_Sample] = []
        self._inbox: "queue.SimpleQueue[Optional[list[_Sample]]]" = queue.SimpleQueue()
        self._ids = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="openvino-engine", daemon=True)
        self._thread.start()

    def submit(self, samples: list[_Sample]) -> None:
        """Queue requests; they are added to the pipeline together, before its next step."""
        if self._closed:
            raise RuntimeError("OpenVINOPolicy was shut down")
        self._inbox.put(samples)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._inbox.put(None)
            self._thread.join(timeout=60)
            self.pipeline = None

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        running: dict[int, _Sample] = {}
        handoff = False  # the last step ended requests: their callers may send the next ones
        while True:
            try:
                item = self._first_item(block=not running and not self.held, handoff=handoff)
                deadline = time.perf_counter() + HANDOFF_MAX_S
                while True:
                    if item is None:
                        self._fail([*running.values(), *self.held], RuntimeError("OpenVINOPolicy was shut down"))
                        self._drain()
                        self._settle(running.values())
                        return
                    self.held.extend(item)
                    wait = min(HANDOFF_GAP_S, deadline - time.perf_counter()) if handoff else 0.0
                    item = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
            except queue.Empty:
                pass
            self._admit(running)
            if not running:
                continue
            start = time.perf_counter()
            self.steps += 1
            self.sequence_steps += len(running)
            try:
                with CPU_TURNS.turn():  # a critic's network on these cores waits for it (and it for them)
                    start = time.perf_counter()
                    self.pipeline.step()
            except Exception as err:  # the engine failed: fail what it held, keep serving
                self._fail(running.values(), RuntimeError(f"OpenVINO pipeline step failed: {err}"))
                for key in running if self.stager is not None else ():
                    self.stager.prefilled(key)
                running.clear()
                continue
            finally:
                self.step_seconds += time.perf_counter() - start
            handoff = False
            for key in list(running):
                sample = running[key]
                try:
                    done = self._advance(sample)
                except Exception as err:  # one bad request fails alone
                    self._fail([sample], RuntimeError(f"OpenVINO request failed: {err}"))
                    self._release(sample)
                    done = True
                if done:
                    del running[key]
                    handoff = True
                if self.stager is not None and (done or sample.ids):
                    self.stager.prefilled(key)

    def _first_item(self, block: bool, handoff: bool):
        """The next item of the inbox: waiting for it when nothing runs; after a step that
        ended requests, up to `HANDOFF_FIRST_S`, since `pipeline.step` holds Python's GIL
        and their callers can only send what comes next while this thread waits; else
        only what is there (raises queue.Empty)."""
        if block:
            return self._inbox.get()
        if handoff:
            return self._inbox.get(timeout=HANDOFF_FIRST_S)
        return self._inbox.get_nowait()

    def _admit(self, running: dict[int, _Sample]) -> None:
        """Add the held requests that may enter now, in order; the others stay held."""
        waiting, self.held = self.held, []
        for sample in waiting:
            if self.stager is None or sample.future.cancelled() or self.stager.ready(sample.prompt):
                key = self._add(sample, running)
                if key is not None and self.stager is not None:
                    self.stager.started(key, sample.prompt)
            else:
                self.held.append(sample)

    def _add(self, sample: _Sample, running: dict[int, _Sample]) -> Optional[int]:
        """Add a request to the pipeline; its key, or None when it was not added."""
        if sample.future.cancelled():
            return None
        key = next(self._ids)
        try:
            tensor = self._ov.Tensor(self._np.asarray([sample.prompt], dtype=self._np.int64))
            sample.handle = self.pipeline.add_request(key, tensor, sample.config)
        except Exception as err:
            sample.future.set_exception(RuntimeError(f"OpenVINO rejected a request: {err}"))
            return None
        running[key] = sample
        return key

    def _advance(self, sample: _Sample) -> bool:
        """Take the sample's new tokens; True once it has finished (its future is set) or
        its caller has gone (cancelled)."""
        genai = sample.handle
        if sample.future.cancelled():
            self._release(sample)
            return True
        while genai.can_read():
            for output in genai.read().values():
                for token, logprob in zip(output.generated_ids, output.generated_log_probs):
                    if sample.finish is None:
                        self._take(sample, int(token), float(logprob))
        if sample.finish is None and self._stopped(genai):
            sample.finish = "length" if len(sample.ids) >= sample.config.max_new_tokens else "eos"
            if not sample.ids:
                self._fail([sample], RuntimeError(
                    f"OpenVINO dropped a request of {len(sample.prompt)} prompt tokens ({genai.get_status()}); "
                    "a request that does not fit the KV cache needs a larger policy.cache_gb"))
                return True
        if sample.finish is None:
            return False
        self._release(sample)  # our stop string: free its slot now
        sample.text = self.tokenizer.decode(sample.ids, skip_special_tokens=True)
        if not sample.future.cancelled():
            sample.future.set_result(sample)
        return True

    def _take(self, sample: _Sample, token: int, logprob: float) -> None:
        """HFPolicy's per-token rule: end of sequence, else a valid stop string in the
        decoded text, else the token limit."""
        sample.ids.append(token)
        sample.logprobs.append(logprob)
        if token in self.eos_ids:
            sample.finish = "eos"
        elif sample.stops and find_stop(self.tokenizer.decode(sample.ids, skip_special_tokens=True), sample.stops) is not None:
            sample.finish = "stop"
        elif len(sample.ids) >= sample.config.max_new_tokens:
            sample.finish = "length"

    def _settle(self, samples, steps: int = 8) -> None:
        """Stop what still runs and let the pipeline free the KV blocks of stopped
        requests (it does so in a step) before it is destroyed."""
        for sample in samples:
            self._release(sample)
        try:
            for _ in range(steps):
                if not self.pipeline.has_non_finished_requests():
                    break
                self.pipeline.step()
        except Exception:  # shutting down: nothing left to serve
            pass

    def _release(self, sample: _Sample) -> None:
        """Stop the sample's request in the pipeline if it is still running."""
        if sample.handle is not None and not self._stopped(sample.handle):
            sample.handle.stop()

    def _stopped(self, handle: Any) -> bool:
        return handle.get_status() != self._running

    @staticmethod
    def _fail(samples, error: Exception) -> None:
        for sample in samples:
            if not sample.future.done():
                sample.future.set_exception(error)

    def _drain(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._fail(item, RuntimeError("OpenVINOPolicy was shut down"))


class _PrefixEstimate:
    """Prompt tokens the pipeline prefills (it does not report them): with prefix caching,
    whole blocks of earlier prompts are served from the cache (least recently used first
    out) and further samples of one prompt recompute only its last, partial block; without
    it, every sample prefills its whole prompt."""

    def __init__(self, capacity_blocks: int, enabled: bool = True):
        self.capacity = capacity_blocks
        self.enabled = enabled
        self._blocks: "OrderedDict[int, None]" = OrderedDict()

    def encode(self, prompt: list[int], draws: int) -> int:
        """Prompt tokens prefilled for `draws` requests of `prompt`; remembers its blocks."""
        if not self.enabled:
            return len(prompt) * draws
        cached, reusing = 0, True
        for end in range(CPU_BLOCK_TOKENS, len(prompt) + 1, CPU_BLOCK_TOKENS):
            key = hash(tuple(prompt[:end]))
            if reusing and key in self._blocks:
                cached = end
                self._blocks.move_to_end(key)
            else:
                reusing = False
                self._blocks[key] = None
        while self._blocks and len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        cached = min(cached, len(prompt) - 1)  # the last token is always computed
        tail = len(prompt) - (len(prompt) - 1) // CPU_BLOCK_TOKENS * CPU_BLOCK_TOKENS
        return len(prompt) - cached + (draws - 1) * tail


def _precision(dtype: Any) -> str:
    """The CPU plugin's inference precision for a dtype name."""
    name = str(dtype).replace("torch.", "").lower()
    if name in ("auto", "none", "float32", "fp32", "f32"):
        return "f32"
    if name in ("bfloat16", "bf16"):
        return "bf16"
    raise ValueError(f"the openvino backend computes in float32 or bfloat16, not dtype={dtype!r}")


def _generation_config(folder):
    """The folder's generation config, or None when it has none (an IR exported elsewhere)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(folder)
    except OSError:
        return None


def _cache_blocks(folder, cache_gb: int) -> int:
    """How many KV blocks `cache_gb` holds for the model in `folder` (fp32 keys and values)."""
    import json
    from pathlib import Path

    config = json.loads((Path(folder) / "config.json").read_text())
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    per_token = 2 * config["num_hidden_layers"] * kv_heads * head_dim * 4
    return int(cache_gb * 2**30 // (per_token * CPU_BLOCK_TOKENS))
