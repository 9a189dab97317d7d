"""The vLLM backend: AsyncLLM with automatic prefix caching, on CUDA machines.

Importing this module never needs vLLM; constructing `VLLMPolicy` does. Written against
vLLM 0.33 (`vllm.v1.engine.async_llm.AsyncLLM`, of which `vllm.AsyncLLMEngine` is an
alias; `vllm.AsyncEngineArgs`, `vllm.SamplingParams`, `vllm.TokensPrompt`).

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
import itertools
import os
import random
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from treesearch.policy.base import BackendCounters, ParamsArg, per_state_counts, per_state_params
from treesearch.policy.engine_thread import EngineThread
from treesearch.policy.steps import find_stop, request_seed, split_completion
from treesearch.prompting import encode_state
from treesearch.schemas import VLLMPolicyConfig
from treesearch.types import SamplingParams, State, Step

INSTALL_HINT = "pip install 'treesearch[vllm]' on a CUDA machine"
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
    return AsyncLLM, AsyncEngineArgs, VSamplingParams, TokensPrompt, RequestOutputKind


async def _gathered(jobs: list) -> list:
    return list(await asyncio.gather(*jobs))


class VLLMPolicy(BackendCounters):
    """A `Policy` on a vLLM engine (GPU), with prefix caching switched on.

    `model`: a Hugging Face id or local folder; "smollm2" is exported once from its GGUF
    file to a plain folder (`export_dir`, default ~/.cache/treesearch/smollm2-hf).
    `engine_kwargs` go to `AsyncEngineArgs` (e.g. tensor_parallel_size, max_model_len).
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
        enforce_eager: bool = False,
        export_dir: Optional[Union[str, os.PathLike]] = None,
        **engine_kwargs: Any,
    ):
        AsyncLLM, AsyncEngineArgs, VSamplingParams, TokensPrompt, RequestOutputKind = _import_vllm()
        self._VSamplingParams = VSamplingParams
        self._TokensPrompt = TokensPrompt
        self._final_only = RequestOutputKind.FINAL_ONLY
        if model == "smollm2":
            from treesearch.models import export_hf_folder

            default = Path.home() / ".cache" / "treesearch" / "smollm2-hf"
            model = str(export_hf_folder("smollm2", export_dir or default))
        from treesearch.models import load_tokenizer

        self.model_name = str(model)
        self.calls_in_flight = int(engine_kwargs.get("max_num_seqs") or 256)
        self.tokenizer = load_tokenizer(self.model_name)
        args = AsyncEngineArgs(
            model=self.model_name,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,
            enforce_eager=enforce_eager,
            **engine_kwargs,
        )
        self._engine_thread = EngineThread(lambda: AsyncLLM.from_engine_args(args), name="vllm-policy")
        self.engine = self._engine_thread.engine
        self._ids = itertools.count()
        self.reset_counters()

    def shutdown(self) -> None:
        """Stop the engine (its background process and GPU memory) and its loop."""
        self.engine.shutdown()
        self._engine_thread.close()

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
        for the critics' scoring requests)."""
        final = None
        request_id = f"treesearch-{next(self._ids)}"
        prompt = self._TokensPrompt(prompt_token_ids=prompt_ids)
        async for output in self.engine.generate(prompt, sampling, request_id):
            final = output
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
