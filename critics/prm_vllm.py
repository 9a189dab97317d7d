"""A value-head PRM on vLLM's pooling runner (`PRMCritic(..., backend="vllm")`).

The folder treesearch writes (`critics.prm_model.ValueHeadModel.save_pretrained`: a causal-LM
folder plus `value_head.safetensors`) loads in vLLM as a pooling model (`runner="pooling"`,
`convert="embed"`); token-wise pooling without normalisation (`token_embed`,
`use_activation=False`) gives the backbone's last hidden state at every token, and the
value head is applied here (vLLM reads the backbone from a folder of links that leaves
the head's file out: `backbone_view`). So one request per path scores all its steps, the requests of
a batch (from every tree) run in the engine together, and the engine settings are the
policy's (`treesearch.policy.vllm.engine_arguments`: a CPU engine gets CPU settings).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any, Optional, Union

from critics.prm_model import LEGACY_VALUE_HEAD, PRM_CONFIG, VALUE_HEAD, load_value_head, value_head_file

PRM_GPU_SHARE = 0.3  # the GPU memory a PRM engine takes beside the policy's (vLLM's gpu_memory_utilization)


def backbone_view(folder: Path) -> Path:
    """A temporary folder of links to a PRM folder's files but its value head and PRM
    config (vLLM loads every `*.safetensors` of a local folder as the model's weights);
    the caller removes it."""
    import tempfile

    view = Path(tempfile.mkdtemp(prefix=f"{folder.name}-backbone-"))
    for entry in folder.resolve().iterdir():
        if entry.name not in (VALUE_HEAD, LEGACY_VALUE_HEAD, PRM_CONFIG):
            (view / entry.name).symlink_to(entry)
    return view


class VLLMValueNet:
    """A value-head PRM folder served by a vLLM pooling engine. Called like
    `ValueHeadModel`, with right-padded `(input_ids, attention_mask)` torch tensors (from
    a thread off the caller's event loop, as `critics.lm.LMScorer.run` does); returns the
    value logits [batch, length] as a float32 tensor (0 at padding)."""

    def __init__(self, folder: Union[str, os.PathLike], *, dtype: str = "auto", threads: Optional[int] = None,
                 gpu_memory_utilization: float = PRM_GPU_SHARE, **engine_kwargs: Any):
        import torch

        from treesearch.policy.engine_thread import EngineThread
        from treesearch.policy.vllm import _import_vllm, bind_cpu_worker, check_model_folder, engine_arguments

        folder = Path(folder).expanduser()
        head_file = value_head_file(folder)
        if head_file is None:
            raise FileNotFoundError(f"{folder}: no value head (value_head.safetensors); the vllm PRM backend "
                                    "serves treesearch's value-head PRMs")
        check_model_folder(str(folder))
        self._backbone = backbone = backbone_view(folder)
        vllm = self._vllm = _import_vllm()
        from vllm import PoolingParams

        if vllm.on_cpu:
            bind_cpu_worker(threads)
        head = load_value_head(head_file)
        self.weight = head["weight"].float().reshape(-1)  # [hidden]
        self.bias = float(head["bias"].float().reshape(-1)[0])
        self.engine_args = engine_arguments(vllm.on_cpu, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                            enforce_eager=engine_kwargs.pop("enforce_eager", None),
                                            engine_kwargs=engine_kwargs)
        args = vllm.AsyncEngineArgs(model=str(backbone), runner="pooling", convert="embed", **self.engine_args)
        self._params = PoolingParams(task="token_embed", use_activation=False)
        self._thread = EngineThread(lambda: vllm.AsyncLLM.from_engine_args(args), name="vllm-prm")
        self.engine, self._thread.engine = self._thread.engine, None
        self._ids = itertools.count()
        self.device = torch.device("cpu")

    def __call__(self, input_ids, attention_mask):
        import torch

        rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids.cpu(), attention_mask.cpu())]
        hidden = self._thread.run(self._encode_all(rows))
        out = torch.zeros(input_ids.shape, dtype=torch.float32)
        for i, states in enumerate(hidden):
            out[i, : states.shape[0]] = states.float() @ self.weight + self.bias
        return out

    async def _encode_all(self, rows: list[list[int]]) -> list:
        return list(await asyncio.gather(*(self._encode(row) for row in rows)))

    async def _encode(self, ids: list[int]):
        final = None
        prompt = self._vllm.TokensPrompt(prompt_token_ids=ids)
        async for output in self.engine.encode(prompt, self._params, f"treesearch-prm-{next(self._ids)}"):
            final = output
        if final is None:
            raise RuntimeError("vLLM returned no hidden states for a PRM request")
        return final.outputs.data

    def eval(self) -> "VLLMValueNet":
        return self

    def shutdown(self) -> None:
        """Stop the PRM's engine and its loop, and remove its folder of links."""
        import gc

        from treesearch.policy.vllm import stop_engine

        import shutil

        engine, self.engine = self.engine, None
        if engine is not None:
            stop_engine(engine, self._thread)
            del engine
            gc.collect()
        shutil.rmtree(self._backbone, ignore_errors=True)
