"""A value-head PRM on OpenVINO's CPU plugin: the same forward pass as `ValueHeadModel`,
compiled from an IR that `treesearch.ir.graph.build_value_model` writes.

`value_ir(folder)` converts a treesearch PRM folder once (cached like the policy's IR, by
a hash of the folder's files and the weight format); `OpenVINOValueNet(folder)` is called
as `ValueHeadModel` is, `(input_ids, attention_mask)` tensors in, per-token value logits
out, so `PRMCritic` scores with it unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

PRM_XML = "openvino_prm.xml"
PRM_MARKER = "treesearch_prm_ir.json"


def value_ir(folder: Union[str, os.PathLike], weights: str = "fp32",
             cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The IR file of the value-head PRM in `folder` with `weights`, converted on first use."""
    from treesearch.ir.convert import cache_root, checkpoint_hash, converted_once
    from treesearch.ir.graph import WEIGHT_FORMATS

    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"openvino PRM: weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    source = Path(os.fspath(folder)).expanduser()
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    target = root / f"prm-{source.name[:40]}-{weights}-{checkpoint_hash(source, weights)}"

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


class OpenVINOValueNet:
    """A PRM's value head and backbone compiled for the CPU (fp32 inference precision by
    default, so values match the transformers PRM's; `dtype="bf16"` trades exactness for
    speed). Called with right-padded `(input_ids, attention_mask)` torch tensors; returns
    the value logits [batch, length] as a float32 tensor."""

    def __init__(self, folder: Union[str, os.PathLike], *, weights: str = "fp32", threads: Optional[int] = None,
                 dtype: Any = "float32", cache_dir: Optional[Union[str, os.PathLike]] = None):
        import openvino as ov
        import torch

        from treesearch.policy.openvino import _precision

        properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _precision(dtype)}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        self.path = value_ir(folder, weights, cache_dir)
        self.compiled = ov.Core().compile_model(str(self.path), "CPU", properties)
        self.device = torch.device("cpu")

    def __call__(self, input_ids, attention_mask):
        import numpy as np
        import torch

        mask = attention_mask.cpu().numpy().astype(np.int64)
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        request = self.compiled.create_infer_request()
        out = request.infer({"input_ids": input_ids.cpu().numpy().astype(np.int64), "attention_mask": mask,
                             "position_ids": positions})
        return torch.from_numpy(np.array(out[self.compiled.output("values")], dtype=np.float32))

    def eval(self) -> "OpenVINOValueNet":
        return self
