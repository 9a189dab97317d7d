"""Scoring with a causal language model: the shared plumbing of the model-based critics.

What `self_eval` and `loglik` need of a model is a `TokenScorer`: its tokenizer and two
kinds of log-probabilities. `LMScorer` gives them with transformers (texts encoded as
token ids and padded into a batch; forward passes in a worker thread, one at a time per
model, so the event loop keeps gathering requests); a policy engine that offers them
(`VLLMPolicy`) can be passed instead, so the critic scores with the policy's weights
instead of loading a second copy.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from treesearch.models import load_causal_lm


@runtime_checkable
class TokenScorer(Protocol):
    """A model's tokenizer and log-probabilities, as the model-based critics use them."""

    tokenizer: Any

    async def next_token_logprobs(self, sequences: Sequence[Sequence[int]],
                                  candidates: Sequence[int]) -> list[list[float]]:
        """For each token sequence, the log-probability of each candidate token next."""

    async def token_logprobs(self, items: Sequence[tuple[Sequence[int], int]]) -> list[list[float]]:
        """For each `(sequence, start)`, the log-probability of every token of
        `sequence[start:]` given the tokens before it (`start` >= 1)."""


ModelArg = Union[str, tuple, TokenScorer]


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """`text` as token ids, with no special tokens added."""
    return tokenizer.encode(text, add_special_tokens=False)


def single_token(tokenizer: Any, word: str, what: str) -> int:
    """The id of `word`, which must encode to one token (`what` names it in the error)."""
    ids = encode_text(tokenizer, word)
    if len(ids) != 1:
        raise ValueError(f"{what} {word!r} is {len(ids)} tokens; it must be one token")
    return ids[0]


async def yes_probabilities(lm: TokenScorer, sequences: Sequence[Sequence[int]], yes_id: int, no_id: int) -> np.ndarray:
    """For each sequence, P(yes) / (P(yes) + P(no)) of the next token (a softmax over the two)."""
    pairs = np.asarray(await lm.next_token_logprobs(sequences, [yes_id, no_id]), dtype=np.float64)
    pairs = pairs.reshape(len(sequences), 2)
    return 1.0 / (1.0 + np.exp(pairs[:, 1] - pairs[:, 0]))


def scorer_for(model: ModelArg, *, device: str = "auto", dtype: Any = "auto", threads: Optional[int] = None,
               max_batch_size: int = 16) -> TokenScorer:
    """The scorer a critic uses: `model` itself when it is one (a policy engine that
    offers log-probabilities), else an `LMScorer` over the named (or given) model."""
    if isinstance(model, TokenScorer) and not isinstance(model, (str, tuple)):
        return model
    return LMScorer(model, device=device, dtype=dtype, threads=threads, max_batch_size=max_batch_size)


def resolve_model(model: ModelArg, device: str, dtype: Any, threads: Optional[int]) -> tuple[Any, Any]:
    """`(model, tokenizer)` from a name/folder (loaded, cached) or a ready pair."""
    if isinstance(model, tuple):
        if threads is not None:
            import torch

            torch.set_num_threads(int(threads))
        return model
    return load_causal_lm(model, device=device, dtype=dtype, threads=threads)


class LMScorer:
    """Holds a model and tokenizer and runs batched forward passes off the event loop (a
    `TokenScorer` with transformers)."""

    def __init__(
        self,
        model: ModelArg = "smollm2",
        *,
        device: str = "auto",
        dtype: Any = "auto",
        threads: Optional[int] = None,
        max_batch_size: int = 16,
    ):
        self.model, self.tokenizer = resolve_model(model, device, dtype, threads)
        self.threads = threads
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()

    @property
    def device(self):
        device = getattr(self.model, "device", None)  # a compiled model (no parameters) names its own
        return device if device is not None else next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def pad(self, sequences: Sequence[Sequence[int]]):
        """Right-padded `(input_ids, attention_mask)` tensors on the model's device."""
        import torch

        width = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
            mask[i, : len(seq)] = 1
        return ids.to(self.device), mask.to(self.device)

    def next_token_logits(self, sequences: Sequence[Sequence[int]]):
        """The logits of the token after each sequence, [batch, vocab] (float32): the
        batch is left-padded and only the last position goes through the LM head, which
        is as fast as OpenVINO on these short scoring prompts (BENCHMARKS.md)."""
        import inspect

        import torch

        width = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[i, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {}
        if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
            kwargs["logits_to_keep"] = 1
        device = self.device
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), **kwargs)
        return out.logits[:, -1, :].float()

    def run_batched(self, fn: Callable[[list], list], items: Sequence, chunked: bool = True) -> list:
        """`fn` over chunks of at most `max_batch_size` items (all at once when not
        `chunked`: `fn` batches them itself), under no-grad, one call at a time."""
        import torch

        out: list = []
        size = self.max_batch_size if chunked else max(1, len(items))
        with self._lock, torch.inference_mode():
            if self.threads is not None:
                torch.set_num_threads(int(self.threads))
            for start in range(0, len(items), size):
                out.extend(fn(list(items[start : start + size])))
        return out

    async def run(self, fn: Callable[[list], list], items: Sequence, chunked: bool = True) -> list:
        return await asyncio.to_thread(self.run_batched, fn, items, chunked)

    async def next_token_logprobs(self, sequences: Sequence[Sequence[int]],
                                  candidates: Sequence[int]) -> list[list[float]]:
        def forward(batch: list) -> list:
            import torch

            logprobs = torch.log_softmax(self.next_token_logits(batch), dim=-1)
            return logprobs[:, list(candidates)].tolist()

        return await self.run(forward, list(sequences))

    async def token_logprobs(self, items: Sequence[tuple[Sequence[int], int]]) -> list[list[float]]:
        def forward(batch: list) -> list:
            import torch

            ids, mask = self.pad([seq for seq, _ in batch])
            logprobs = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            out = []
            for i, (seq, start) in enumerate(batch):
                targets = ids[i, start: len(seq)]
                out.append(logprobs[i, start - 1: len(seq) - 1].gather(1, targets[:, None]).squeeze(1).tolist())
            return out

        return await self.run(forward, list(items))

