"""The process reward model critic: a PRM's value of the latest step (or of all steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from critics.registry import register_critic
from critics.lm import LMScorer
from critics.prm_model import PRMFormat, ValueHeadModel, encode_segments, read_format
from treesearch.prompting import render_prompt, without_demonstrations
from treesearch.types import State

AGGREGATES = ("last", "min", "mean", "prod")
BACKENDS = ("auto", "hf", "openvino", "vllm")


class PRMCritic:
    """Scores states with a process reward model.

    `model`: a checkpoint folder, or a ready `(model, tokenizer)` pair. `style`:
    "value_head", "math_shepherd" or "qwen_prm" (see `critics.prm_model`); by default read
    from a treesearch folder's `treesearch_prm.json`, else "math_shepherd".
    `aggregate`: how step values become the state's value: the latest step's ("last",
    the default), or the min / mean / product over all steps. A state with no steps
    scores `empty_value`. `trust_remote_code`: let a folder's own Python code run (a
    `qwen_prm` checkpoint whose config.json maps to code in the folder); off by default,
    because a PRM folder is data people pass around. `backend`: "hf" (transformers),
    "openvino" (a value-head folder compiled for the CPU plugin, `critics.prm_openvino`;
    fp32, values equal to the transformers PRM's within 1e-4), "vllm" (a value-head folder on
    vLLM's pooling runner, `critics.prm_vllm`; a GPU, or the CPU with vLLM's CPU build) or
    "auto", the default (openvino for a value-head folder on a CPU-only device where its
    architecture converts, else hf).
    """

    def __init__(
        self,
        model: Union[str, Path, tuple],
        *,
        style: Optional[str] = None,
        separator: Optional[str] = None,
        aggregate: str = "last",
        device: str = "auto",
        dtype: Any = "auto",
        threads: Optional[int] = None,
        max_batch_size: int = 16,
        empty_value: float = 0.5,
        trust_remote_code: bool = False,
        backend: str = "auto",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown PRM backend {backend!r}; choose from {BACKENDS}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown PRM aggregate {aggregate!r}; choose from {AGGREGATES}")
        self.aggregate = aggregate
        self.empty_value = empty_value
        if isinstance(model, tuple):
            self.backend = "given"
            network, tokenizer = model
            fmt = PRMFormat(style or ("value_head" if isinstance(network, ValueHeadModel) else "math_shepherd"), separator)
        else:
            folder = Path(model).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"PRM checkpoint folder not found: {folder}")
            if not (folder / "config.json").is_file():
                raise ValueError(f"critic.model={folder} is not a PRM checkpoint: it has no config.json (a treesearch "
                                 "PRM folder from train_prm, or a Hugging Face Math-Shepherd / Qwen-PRM folder)")
            fmt = read_format(folder) or PRMFormat(style or "math_shepherd", separator)
            if style is not None and style != fmt.style:
                fmt = PRMFormat(style, separator, prompts=fmt.prompts)  # the folder's prompt form stays
            self.backend = _resolve_backend(backend, folder, fmt, device)
            if self.backend == "openvino":
                from critics.prm_openvino import OpenVINOValueNet
                from treesearch.models import load_tokenizer

                network, tokenizer = OpenVINOValueNet(folder, threads=threads), load_tokenizer(str(folder))
            elif self.backend == "vllm":
                from critics.prm_vllm import VLLMValueNet
                from treesearch.models import load_tokenizer

                dtype_name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
                network, tokenizer = VLLMValueNet(folder, dtype=dtype_name, threads=threads), load_tokenizer(str(folder))
            else:
                network, tokenizer = self._load(folder, fmt, device, dtype, trust_remote_code)
        self.format = fmt
        self.lm = LMScorer((network, tokenizer), threads=threads, max_batch_size=max_batch_size)
        if fmt.style == "math_shepherd":
            self.good_id = self._single_token(fmt.good_token)
            self.bad_id = self._single_token(fmt.bad_token)

    @staticmethod
    def _load(folder: Path, fmt: PRMFormat, device: str, dtype: Any, trust_remote_code: bool = False):
        from treesearch.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype

        if fmt.style == "value_head":
            return ValueHeadModel.from_pretrained(folder, device=device, dtype=dtype), load_tokenizer(str(folder))
        if fmt.style == "math_shepherd":
            return load_causal_lm(str(folder), device=device, dtype=dtype)
        from transformers import AutoModel

        if not trust_remote_code and _needs_remote_code(folder):
            raise ValueError(
                f"PRM folder {folder}: its config.json maps the model to Python code in the folder (auto_map); "
                "treesearch does not run a folder's code unless you allow it: critic.trust_remote_code=true "
                "(PRMCritic(..., trust_remote_code=True)), for a folder you trust"
            )
        device = resolve_device(device)
        net = AutoModel.from_pretrained(
            str(folder), dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code
        )
        return net.to(device).eval(), load_tokenizer(str(folder))

    def shutdown(self) -> None:
        """Stop the PRM's engine, where it has one of its own (the vllm backend)."""
        stop = getattr(self.lm.model, "shutdown", None)
        if callable(stop):
            stop()

    def _single_token(self, text: str) -> int:
        ids = self.lm.encode(text)
        if len(ids) != 1:
            raise ValueError(f"PRM label token {text!r} is {len(ids)} tokens; it must be one token")
        return ids[0]

    def step_values_batch(self, items: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Values of every scored position, for encoded `(ids, positions)` items."""
        import torch

        ids, mask = self.lm.pad([seq for seq, _ in items])
        net = self.lm.model
        if self.format.style == "value_head":
            per_token = torch.sigmoid(net(input_ids=ids, attention_mask=mask).float())
        else:
            output = net(input_ids=ids, attention_mask=mask)
            logits = (output.logits if hasattr(output, "logits") else output[0]).float()
            if self.format.style == "math_shepherd":
                pair = torch.stack([logits[..., self.good_id], logits[..., self.bad_id]], dim=-1)
                per_token = torch.softmax(pair, dim=-1)[..., 0]
            else:
                per_token = torch.softmax(logits[..., :2], dim=-1)[..., 1]
        return [per_token[i, pos].tolist() for i, (_, pos) in enumerate(items)]

    def encode(self, state: State) -> tuple[list[int], list[int]]:
        """`(ids, positions)`: the state's tokens and the position scoring each step."""
        ids, ends = self.segments(state)
        return ids, [end - 1 for end in ends[1:]]

    def segments(self, state: State) -> tuple[list[int], list[int]]:
        """`(ids, ends)`: the state's tokens and where its prompt and each step end."""
        prompt = state.prompt if self.format.prompts == "searched" else without_demonstrations(state.prompt)
        return encode_segments(self.lm.tokenizer, render_prompt(self.lm.tokenizer, prompt), state.steps, self.format)

    def _cached_step_values(self, items: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Step values from a network that reuses the keys and values of scored segments."""
        return [(1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).tolist()
                for logits in self.lm.model.score_steps(items, self.lm.max_batch_size)]

    async def step_values(self, states: Sequence[State]) -> list[list[float]]:
        """The PRM's value of every step of each state."""
        segmented = [self.segments(s) for s in states]
        scored = [i for i, (_, ends) in enumerate(segmented) if len(ends) > 1]
        if hasattr(self.lm.model, "score_steps"):
            values = await self.lm.run(self._cached_step_values, [segmented[i] for i in scored], chunked=False)
        else:
            items = [(ids, [end - 1 for end in ends[1:]]) for ids, ends in segmented]
            values = await self.lm.run(self.step_values_batch, [items[i] for i in scored])
        out: list[list[float]] = [[] for _ in states]
        for i, v in zip(scored, values):
            out[i] = v
        return out

    async def score(self, states: Sequence[State]) -> np.ndarray:
        per_step = await self.step_values(states)
        out = np.full(len(states), self.empty_value, dtype=np.float64)
        for i, values in enumerate(per_step):
            if not values:
                continue
            v = np.asarray(values, dtype=np.float64)
            out[i] = {"last": v[-1], "min": v.min(), "mean": v.mean(), "prod": v.prod()}[self.aggregate]
        return np.clip(out, 0.0, 1.0)


def _needs_remote_code(folder: Path) -> bool:
    """The folder's config.json points a model class at code (`auto_map`)."""
    import json

    config = folder / "config.json"
    try:
        return bool(json.loads(config.read_text()).get("auto_map")) if config.is_file() else False
    except ValueError:
        return False


register_critic("prm", PRMCritic)


def _resolve_backend(backend: str, folder: Path, fmt: PRMFormat, device: str) -> str:
    """"hf" or "openvino" for a PRM folder: "auto" takes openvino for a value-head folder
    on the CPU whose architecture the IR builder supports."""
    if backend in ("openvino", "vllm") and fmt.style != "value_head":
        raise ValueError(f"PRM folder {folder}: the {backend} backend runs value-head PRMs, this one is {fmt.style!r}")
    if backend != "auto":
        return backend
    from treesearch.models import resolve_device

    if fmt.style != "value_head" or str(resolve_device(device)) != "cpu":
        return "hf"
    try:
        import openvino  # noqa: F401
        from transformers import AutoConfig

        from treesearch.ir.graph import check_supported

        check_supported(AutoConfig.from_pretrained(str(folder)))
    except (ImportError, ValueError):
        return "hf"
    return "openvino"
