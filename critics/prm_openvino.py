"""A value-head PRM on OpenVINO's CPU plugin: the same forward pass as `ValueHeadModel`,
compiled from an IR that `treesearch.ir.graph.build_value_model` writes.

`value_ir(folder)` converts a treesearch PRM folder once (cached like the policy's IR, by
a hash of the folder's files and the weight format); `OpenVINOValueNet(folder)` scores
states step by step, reusing the keys and values of the prompt and steps it has already
run (`critics.kv_segments`), and can also be called as `ValueHeadModel` is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from treesearch.policy.cpu_turns import CPU_TURNS

PRM_XML = "openvino_prm.xml"
PRM_MARKER = "treesearch_prm_ir.json"
IR_FORM = "kv1"  # the graph's interface (past keys and values in, new ones out); a new form converts again


def value_ir(folder: Union[str, os.PathLike], weights: str = "fp32",
             cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The IR file of the value-head PRM in `folder` with `weights`, converted on first use."""
    from treesearch.ir.convert import cache_root, checkpoint_hash, converted_once
    from treesearch.ir.graph import WEIGHT_FORMATS

    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"openvino PRM: weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    source = Path(os.fspath(folder)).expanduser()
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    target = root / f"prm-{source.name[:40]}-{weights}-{IR_FORM}-{checkpoint_hash(source, weights)}"

    def write(scratch: Path) -> dict:
        import openvino as ov

        from critics.prm_model import ValueHeadModel
        from treesearch.ir.graph import build_value_model

        model = ValueHeadModel.from_pretrained(source, device="cpu", dtype="float32")
        head = model.head
        built = build_value_model(model.causal_lm, head.weight.detach().float().numpy(),
                                  head.bias.detach().float().numpy(), weights)
        ov.save_model(built, scratch / PRM_XML, compress_to_fp16=False)
        return {"source": str(source), "weights": weights}

    return converted_once(target, PRM_MARKER, write) / PRM_XML


KV_CACHE_GIB = 1.0  # keys and values of scored prompts and steps kept for the states that extend them


class OpenVINOValueNet:
    """A PRM's value head and backbone compiled for the CPU (fp32 inference precision by
    default, so values match the transformers PRM's; `dtype="bf16"` trades exactness for
    speed).

    `score_steps(items, batch_size)` scores states given as `(ids, ends)` (`ends[0]` the
    prompt's length, then each step's end): only the tokens after the longest chain of segments
    already run are computed; the keys and values of the rest come from a
    `critics.kv_segments.SegmentCache` of `kv_cache_gib` GiB (0: none). Called as
    `ValueHeadModel` is, with right-padded `(input_ids, attention_mask)` torch tensors, it
    runs every token and returns the value logits [batch, length] (float32)."""

    def __init__(self, folder: Union[str, os.PathLike], *, weights: str = "fp32", threads: Optional[int] = None,
                 dtype: Any = "float32", cache_dir: Optional[Union[str, os.PathLike]] = None,
                 kv_cache_gib: float = KV_CACHE_GIB):
        import openvino as ov
        import torch

        from critics.kv_segments import SegmentCache
        from treesearch.policy.openvino import _precision

        properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _precision(dtype)}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        self.path = value_ir(folder, weights, cache_dir)
        self.compiled = ov.Core().compile_model(str(self.path), "CPU", properties)
        self.device = torch.device("cpu")
        self.past_names = [p.get_any_name() for p in self.compiled.inputs if p.get_any_name().startswith("past.")]
        shape = self.compiled.input(self.past_names[0]).get_partial_shape()
        self.kv_heads, self.head_dim = shape[1].get_length(), shape[3].get_length()
        self.cache = SegmentCache(int(kv_cache_gib * (1 << 30)))
        self.tokens_run = 0  # tokens through the network
        self.tokens_reused = 0  # tokens whose keys and values came from the cache

    def _infer(self, ids, mask, positions, past: list) -> tuple:
        """One forward: value logits [B, T] and the new keys/values [layers, 2, B, kv, T, D]."""
        import numpy as np

        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feed.update(zip(self.past_names, past))
        with CPU_TURNS.turn():  # not at once with the policy engine's steps (`treesearch.policy.cpu_turns`)
            out = self.compiled.create_infer_request().infer(feed)
        values = np.array(out[self.compiled.output("values")], dtype=np.float32)
        layers = len(self.past_names) // 2
        present = np.stack([np.stack([out[self.compiled.output(f"present.{i}.{kind}")] for kind in ("key", "value")])
                            for i in range(layers)])
        self.tokens_run += int(mask[:, mask.shape[1] - ids.shape[1]:].sum())
        return values, present

    def __call__(self, input_ids, attention_mask):
        import numpy as np
        import torch

        mask = attention_mask.cpu().numpy().astype(np.int64)
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        empty = np.zeros((mask.shape[0], self.kv_heads, 0, self.head_dim), dtype=np.float32)
        values, _ = self._infer(input_ids.cpu().numpy().astype(np.int64), mask, positions,
                                [empty] * len(self.past_names))
        return torch.from_numpy(values)

    def score_steps(self, items: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int) -> list[list[float]]:
        """For each `(ids, ends)`, the value logit at the end of each step (`ends[1:]`), in
        forwards of at most `batch_size` states: the prompts not cached yet run first, once
        each, then the states, the ones with the fewest new tokens together."""
        from critics.kv_segments import segment_keys

        if self.cache.max_bytes > 0:
            prompts: dict[bytes, tuple] = {}
            for ids, ends in items:
                key = segment_keys(ids, ends[:1])[0]
                if key not in self.cache and key not in prompts:
                    prompts[key] = (ids[: ends[0]], ends[:1])
            queued = list(prompts.values())
            for begin in range(0, len(queued), batch_size):
                self.step_logits(queued[begin: begin + batch_size])

        def new_tokens(item) -> int:
            ids, ends = item
            chain = self.cache.chain(segment_keys(ids, ends), len(ends) - 1)
            return len(ids) - (ends[len(chain) - 1] if chain else 0)

        order = sorted(range(len(items)), key=lambda i: new_tokens(items[i]))
        out: list[list[float]] = [[] for _ in items]
        for begin in range(0, len(order), batch_size):
            chunk = order[begin: begin + batch_size]
            for i, logits in zip(chunk, self.step_logits([items[i] for i in chunk])):
                out[i] = logits
        return out

    def step_logits(self, items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]:
        """For each `(ids, ends)`, the value logit at the end of each step (`ends[1:]`), in
        one forward that runs only the segments after each state's longest cached chain
        (never its last segment) and caches the segments it runs."""
        import numpy as np

        from critics.kv_segments import Segment, segment_keys

        keys = [segment_keys(ids, ends) for ids, ends in items]
        chains = [self.cache.chain(k, len(k) - 1) for k in keys]
        starts = [ends[len(chain) - 1] if chain else 0 for (_, ends), chain in zip(items, chains)]
        past_len = max(starts)
        new_len = max(len(ids) - start for (ids, _), start in zip(items, starts))
        batch = len(items)
        ids = np.zeros((batch, new_len), dtype=np.int64)
        mask = np.zeros((batch, past_len + new_len), dtype=np.int64)
        positions = np.zeros((batch, new_len), dtype=np.int64)
        layers = len(self.past_names) // 2
        past = np.zeros((layers, 2, batch, self.kv_heads, past_len, self.head_dim), dtype=np.float32)
        for b, ((seq, _), chain, start) in enumerate(zip(items, chains, starts)):
            tail = np.asarray(seq[start:], dtype=np.int64)
            ids[b, : len(tail)] = tail
            positions[b] = start + np.arange(new_len)
            mask[b, :start] = 1
            mask[b, past_len: past_len + len(tail)] = 1
            if chain:
                past[:, :, b, :, :start] = np.concatenate([s.kv for s in chain], axis=3)
            self.tokens_reused += start
        values, present = self._infer(ids, mask, positions, [past[i, k] for i in range(layers) for k in range(2)])
        out = []
        for b, ((_, ends), chain, start) in enumerate(zip(items, chains, starts)):
            logits = [s.logit for s in chain[1:]]
            for k in range(len(chain), len(ends)):
                begin, end = (ends[k - 1] if k else 0) - start, ends[k] - start
                logit = float(values[b, end - 1]) if k else None
                self.cache.put(keys[b][k], Segment(np.ascontiguousarray(present[:, :, b, :, begin:end]), logit))
                if k:
                    logits.append(logit)
            out.append(logits)
        return out

    def eval(self) -> "OpenVINOValueNet":
        return self
