"""Scoring with a causal language model: the shared plumbing of the model-based critics.

Texts are encoded as token ids and right-padded into a batch; forward passes run in a
worker thread (one at a time per model) so the event loop keeps gathering requests.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Optional, Sequence, Union

from treesearch.models import load_causal_lm

ModelArg = Union[str, tuple]


def resolve_model(model: ModelArg, device: str, dtype: Any, threads: Optional[int]) -> tuple[Any, Any]:
    """`(model, tokenizer)` from a name/folder (loaded, cached) or a ready pair."""
    if isinstance(model, tuple):
        if threads is not None:
            import torch

            torch.set_num_threads(int(threads))
        return model
    return load_causal_lm(model, device=device, dtype=dtype, threads=threads)


class LMScorer:
    """Holds a model and tokenizer and runs batched forward passes off the event loop."""

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
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

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

    def run_batched(self, fn: Callable[[list], list], items: Sequence) -> list:
        """`fn` over chunks of at most `max_batch_size` items, under no-grad."""
        import torch

        out: list = []
        with self._lock, torch.inference_mode():
            if self.threads is not None:
                torch.set_num_threads(int(self.threads))
            for start in range(0, len(items), self.max_batch_size):
                out.extend(fn(list(items[start : start + self.max_batch_size])))
        return out

    async def run(self, fn: Callable[[list], list], items: Sequence) -> list:
        return await asyncio.to_thread(self.run_batched, fn, items)
