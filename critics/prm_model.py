"""Process reward models: checkpoint formats and how a solution's steps are encoded.

Three styles, chosen by config (`style`):

- ``value_head`` (treesearch's own, what `treesearch.train` writes): a causal-LM backbone
  with a scalar head; a step's value is sigmoid(head(h)) at the step's last token. Folder:
  a Hugging Face causal-LM folder plus `value_head.safetensors` and `treesearch_prm.json`
  (heads saved before as `value_head.pt` still load, as tensors only).
- ``math_shepherd``: a causal LM; each step is followed by a tag (" ки"), and a step's
  value is P(good) / (P(good) + P(bad)) for the tokens "+"/"-" predicted at the tag.
- ``qwen_prm`` (Qwen2.5-Math-PRM convention): each step is followed by "<extra_0>"; the
  model returns two logits per token; a step's value is softmax(...)[1] at the separator.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from treesearch.prompting import PROMPT_FORMS

PRM_STYLES = ("value_head", "math_shepherd", "qwen_prm")
PRM_CONFIG = "treesearch_prm.json"
VALUE_HEAD = "value_head.safetensors"
LEGACY_VALUE_HEAD = "value_head.pt"  # torch.save'd by earlier versions


def value_head_file(folder: Path) -> Optional[Path]:
    """The value head's weights in `folder` (safetensors, else a legacy .pt), or None."""
    for name in (VALUE_HEAD, LEGACY_VALUE_HEAD):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def load_value_head(path: Path, device: Any = "cpu") -> dict:
    """A value head's state dict: safetensors, or a legacy .pt read as tensors only
    (`weights_only=True`: a pickled object in the file is refused, never run)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(device))
    return torch.load(path, map_location=device, weights_only=True)


@dataclass
class PRMFormat:
    """How steps are marked: `separator` text appended after each step (None: score at
    each step's last token), and the good/bad label tokens of the math_shepherd style.
    `prompts`: "searched" (a state's prompt is scored as it is) or "zero_shot" (its worked
    examples are dropped first: the PRM trained on prompts without any, so a few-shot
    search's states read as in training; `treesearch.prompting.without_demonstrations`)."""

    style: str = "value_head"
    separator: Optional[str] = None
    good_token: str = "+"
    bad_token: str = "-"
    prompts: str = "searched"

    def __post_init__(self) -> None:
        if self.style not in PRM_STYLES:
            raise ValueError(f"unknown PRM style {self.style!r}; choose from {PRM_STYLES}")
        if self.prompts not in PROMPT_FORMS:
            raise ValueError(f"unknown PRM prompts {self.prompts!r}; choose from {PROMPT_FORMS}")
        if self.separator is None and self.style == "math_shepherd":
            self.separator = " ки"
        if self.separator is None and self.style == "qwen_prm":
            self.separator = "<extra_0>"


def encode_segments(tokenizer: Any, prompt_text: str, steps: Sequence[str], fmt: PRMFormat) -> tuple[list[int], list[int]]:
    """Token ids of prompt + steps (+ separators) and where each segment ends: `ends[0]` is
    the prompt's length, `ends[k]` the end of step k. Steps are tokenized one by one, so a
    state's ids begin with its parent's."""
    ids = tokenizer.encode(prompt_text, add_special_tokens=False)
    sep = tokenizer.encode(fmt.separator, add_special_tokens=False) if fmt.separator else []
    ends = [len(ids)]
    for step in steps:
        ids = ids + tokenizer.encode(step, add_special_tokens=False) + sep
        ends.append(len(ids))
    return ids, ends


def encode_steps(tokenizer: Any, prompt_text: str, steps: Sequence[str], fmt: PRMFormat) -> tuple[list[int], list[int]]:
    """Token ids of prompt + steps (+ separators) and, per step, the position whose output
    scores it (the step's last token). Training and scoring both use this function, so
    they see the same tokens."""
    ids, ends = encode_segments(tokenizer, prompt_text, steps, fmt)
    return ids, [end - 1 for end in ends[1:]]


class ValueHeadModel(torch.nn.Module):
    """A causal-LM backbone with a scalar value head (logits; apply sigmoid for values)."""

    def __init__(self, causal_lm: Any):
        super().__init__()
        self.causal_lm = causal_lm
        hidden = causal_lm.config.hidden_size
        param = next(causal_lm.parameters())
        self.head = torch.nn.Linear(hidden, 1).to(device=param.device, dtype=param.dtype)
        torch.nn.init.normal_(self.head.weight, std=1.0 / hidden**0.5)
        torch.nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        return self.causal_lm.config

    def forward(self, input_ids, attention_mask=None):
        """Per-token value logits, shape [batch, length]."""
        out = self.causal_lm.base_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.head(out.last_hidden_state).squeeze(-1)

    def save_pretrained(self, folder: str | Path, tokenizer: Any = None, fmt: Optional[PRMFormat] = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.causal_lm.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in self.head.state_dict().items()}, str(folder / VALUE_HEAD))
        (folder / PRM_CONFIG).write_text(json.dumps(asdict(fmt or PRMFormat()), indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device: str = "auto", dtype: Any = "auto") -> "ValueHeadModel":
        """Load a folder written by `save_pretrained` (backbone + value head)."""
        from treesearch.models import load_causal_lm

        folder = Path(folder)
        head = value_head_file(folder)
        if head is None:
            raise FileNotFoundError(f"{folder} has no {VALUE_HEAD}: not a value-head PRM checkpoint")
        causal_lm, _ = load_causal_lm(str(folder), device=device, dtype=dtype)
        model = cls(causal_lm)
        model.head.load_state_dict(load_value_head(head, next(causal_lm.parameters()).device))
        model.eval()
        return model


def read_format(folder: str | Path) -> Optional[PRMFormat]:
    """The PRMFormat recorded in a treesearch PRM folder, or None for foreign checkpoints."""
    path = Path(folder) / PRM_CONFIG
    if not path.is_file():
        return None
    return PRMFormat(**json.loads(path.read_text()))
