"""The transformers backend: batched step generation on CPU or GPU with prefix reuse.

Decoding is a small loop of our own rather than `model.generate`, for two reasons:

- prefix reuse: the n samples of one state share one prefill of its prompt; the KV cache
  is then repeated n times along the batch before decoding (`prompt_tokens_encoded` vs
  `prompt_tokens_naive` count what that saves);
- per-sequence stopping on decoded text (a step delimiter such as "\\n" may be part of a
  token like "\\n\\n" or ".\\n"), with whitespace-only steps skipped, and finished
  sequences dropped from the batch at once.

Steps follow the semantics every backend shares (`treesearch.policy.steps`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch

from treesearch.policy.base import BackendCounters, ParamsArg, per_state_counts, per_state_params
from treesearch.policy.steps import eos_token_ids, find_stop, finished_step, request_seed, split_completion
from treesearch.prompting import encode_state
from treesearch.types import SamplingParams, State, Step

# ----------------------------------------------------------------------------------------
# The backend


@dataclass
class _Row:
    """One sequence being generated."""

    prompt_ids: list[int]
    generator: Optional[torch.Generator]
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish: Optional[str] = None


class HFPolicy(BackendCounters):
    """A `Policy` on a transformers causal LM (CPU or GPU).

    `model`: "smollm2", a local folder or a Hugging Face id (see `treesearch.models`),
    or a `(model, tokenizer)` pair. `threads` sets torch's CPU thread count.
    `max_batch_size` bounds the sequences decoded at once; larger requests are split.

    Counters: `prompt_tokens_encoded` (prompt tokens actually prefilled),
    `prompt_tokens_naive` (what encoding every sample's prompt would cost),
    `generated_tokens`, `calls`, `model_seconds`.
    """

    COUNTERS = BackendCounters.COUNTERS + ("model_seconds",)

    def __init__(
        self,
        model: Any = "smollm2",
        *,
        device: str = "auto",
        dtype: Any = "auto",
        threads: Optional[int] = None,
        max_batch_size: int = 32,
    ):
        from treesearch.models import load_causal_lm

        if max_batch_size < 1:
            raise ValueError(f"HFPolicy.max_batch_size must be >= 1, got {max_batch_size}")
        self.threads = threads
        if threads is not None:
            torch.set_num_threads(int(threads))
        if isinstance(model, (tuple, list)):
            self.model, self.tokenizer = model
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        else:
            self.model, self.tokenizer = load_causal_lm(
                model, device=device, dtype=dtype, threads=threads
            )
        self.device = next(self.model.parameters()).device
        self.max_batch_size = int(max_batch_size)
        self.eos_ids = eos_token_ids(getattr(self.model, "generation_config", None), self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = next(iter(self.eos_ids), 0)
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params
        self._lock = threading.Lock()
        self.reset_counters()

    def shutdown(self) -> None:
        """Nothing to stop (the engine has no thread); the other backends need it."""

    # -- Policy protocol ------------------------------------------------------------------

    async def expand(
        self, states: Sequence[State], n: Union[int, Sequence[int]], params: ParamsArg
    ) -> list[list[Step]]:
        """For each state, `n` (or `n[i]`) samples of the next step, in order, sampled with
        `params` (or `params[i]`)."""
        counts = per_state_counts(states, n)
        per_state = per_state_params(states, params)
        return await asyncio.to_thread(self._run, states, counts, per_state, True)

    async def complete(self, states: Sequence[State], params: ParamsArg) -> list[list[Step]]:
        """For each state, one completion to EOS or `max_new_tokens`, split into steps."""
        per_state = per_state_params(states, params)
        return await asyncio.to_thread(self._run, states, [1] * len(states), per_state, False)

    # -- blocking work --------------------------------------------------------------------

    def _encode(self, state: State) -> list[int]:
        return encode_state(self.tokenizer, state)

    def _run(
        self,
        states: Sequence[State],
        counts: list[int],
        params: list[SamplingParams],
        as_steps: bool,
    ) -> list[list[Step]]:
        with self._lock:
            if self.threads is not None:
                torch.set_num_threads(int(self.threads))
            start = time.perf_counter()
            # rows of states whose params differ only in their seed are generated together
            groups: dict[SamplingParams, list[_Row]] = {}
            rows: list[tuple[int, _Row]] = []
            for i, (state, count, p) in enumerate(zip(states, counts, params)):
                prompt = self._encode(state)
                base = p.seed if p.seed is not None else random.SystemRandom().getrandbits(62)
                group = groups.setdefault(dataclasses.replace(p, seed=None, stop=tuple(p.stop)), [])
                for j in range(count):
                    gen = None
                    if not p.greedy:
                        gen = torch.Generator(device=self.device)
                        gen.manual_seed(request_seed(base, prompt, j))
                    row = _Row(prompt, gen)
                    group.append(row)
                    rows.append((i, row))
            for p, group in groups.items():
                stops = tuple(p.stop) if as_steps else ()
                for k in range(0, len(group), self.max_batch_size):
                    self._generate(group[k : k + self.max_batch_size], p, stops)
            out: list[list[Step]] = [[] for _ in states]
            for i, row in rows:
                if as_steps:
                    out[i].append(self._step(row, params[i].stop))
                else:
                    out[i] = split_completion(
                        self.tokenizer, row.text, row.ids, row.logprobs, row.finish, params[i].stop
                    )
            # each distinct prompt was prefilled once: charge it to its first request
            charged: set[tuple[int, ...]] = set()
            for i, row in rows:
                key = tuple(row.prompt_ids)
                if key not in charged and out[i]:
                    charged.add(key)
                    out[i][0] = dataclasses.replace(out[i][0], prompt_tokens=len(row.prompt_ids))
            self.calls += 1
            self.generated_tokens += sum(len(r.ids) for _, r in rows)
            self.model_seconds += time.perf_counter() - start
            return out

    def _step(self, row: _Row, stops: Sequence[str]) -> Step:
        return finished_step(row.text, row.ids, row.logprobs, row.finish, stops)

    def _forward(self, input_ids, attention_mask, position_ids, cache, last_only: bool):
        kwargs = {self._cache_arg: cache, "use_cache": True}
        if last_only and self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        return out.logits[:, -1, :].float()

    def _new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            return DynamicCache()

    @torch.inference_mode()
    def _generate(self, rows: list[_Row], params: SamplingParams, stops: Sequence[str]) -> None:
        """Generate for `rows` (one batch) in place: prefill each distinct prompt once,
        repeat its cache for its samples, then decode until every row has finished."""
        distinct: dict[tuple[int, ...], int] = {}
        which = [distinct.setdefault(tuple(r.prompt_ids), len(distinct)) for r in rows]
        prompts = list(distinct)
        self.prompt_tokens_encoded += sum(len(p) for p in prompts)
        self.prompt_tokens_naive += sum(len(r.prompt_ids) for r in rows)

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self._new_cache()
        logits = self._forward(ids, mask, positions, cache, last_only=True)

        index = torch.tensor(which, device=self.device)
        if which != list(range(len(prompts))):
            cache.batch_select_indices(index)  # repeat each prompt's cache for its samples
        logits, mask = logits[index], mask[index]
        next_pos = positions[index, -1] + 1

        active = list(range(len(rows)))  # rows still generating, in batch order
        for _ in range(params.max_new_tokens):
            tokens, logps = self._sample(logits, [rows[i].generator for i in active], params)
            keep = []
            for b, i in enumerate(active):
                row = rows[i]
                token = int(tokens[b])
                row.ids.append(token)
                row.logprobs.append(float(logps[b]))
                if stops:  # stop strings are matched on decoded text
                    row.text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
                if token in self.eos_ids:
                    row.finish = "eos"
                elif stops and find_stop(row.text, stops) is not None:
                    row.finish = "stop"
                elif len(row.ids) >= params.max_new_tokens:
                    row.finish = "length"
                else:
                    keep.append(b)
                    continue
                row.text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
            if not keep:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(sel)
                mask, next_pos, tokens = mask[sel], next_pos[sel], tokens[sel]
                active = [active[b] for b in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            logits = self._forward(tokens[:, None], mask, next_pos[:, None], cache, last_only=False)
            next_pos = next_pos + 1

    @staticmethod
    def _sample(logits: torch.Tensor, generators: list, params: SamplingParams):
        """Next token per row (greedy, or temperature + top-p with each row's generator)
        and its log-probability under the unscaled distribution."""
        logp = torch.log_softmax(logits, dim=-1)
        if params.greedy:
            tokens = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / params.temperature, dim=-1)
            if params.top_p < 1.0:
                sorted_p, order = probs.sort(dim=-1, descending=True)
                drop = sorted_p.cumsum(dim=-1) - sorted_p > params.top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            tokens = torch.stack(
                [torch.multinomial(probs[b], 1, generator=g)[0] for b, g in enumerate(generators)]
            )
        return tokens, logp.gather(-1, tokens[:, None])[:, 0].tolist()
