"""Helpers both trainers share: reading data rows and naming them in errors, a private
copy of a model to train, and the transformers Trainer settings and callbacks."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence, Union

log = logging.getLogger("treesearch.train")

DataArg = Union[str, os.PathLike, Sequence[Mapping], Any]
TRAIN_RECORD = "treesearch_train.json"


TRAINING_STACK = ("trl", "peft", "accelerate")


def require_training_stack(what: str, packages: Sequence[str] = TRAINING_STACK) -> None:
    """Raise a clear ImportError when packages of the `train` extra (TRL, PEFT,
    accelerate) that `what` needs are missing: a user who only searches does not install
    them."""
    import importlib.util

    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"{what} needs the training packages {missing}: pip install 'treesearch[train]'")


def read_rows(data: DataArg, what: str = "data") -> list[dict]:
    """Rows of `data` as plain dicts: a Parquet file, a folder of Parquet files, a
    `datasets.Dataset` (anything with `to_list`), or a sequence of dicts."""
    if isinstance(data, (str, os.PathLike)):
        import pyarrow.parquet as pq

        path = Path(data).expanduser()
        if path.is_dir():
            files = sorted(path.glob("*.parquet"))
            if not files:
                raise FileNotFoundError(f"{what}: no .parquet files in folder {path}")
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"{what}: file not found: {path}")
        rows: list[dict] = []
        for file in files:
            rows.extend(pq.read_table(file).to_pylist())
    elif hasattr(data, "to_list") and callable(data.to_list):
        rows = list(data.to_list())
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        rows = list(data)
    else:
        raise TypeError(
            f"{what}: expected a Parquet path, a datasets.Dataset or a list of dicts, got {type(data).__name__}"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"{what} row {i}: expected a dict, got {type(row).__name__}")
    if not rows:
        raise ValueError(f"{what}: no rows")
    return [dict(r) for r in rows]


def row_name(what: str, i: int, row: Mapping) -> str:
    """`"<what> row <i>"`, with the row's problem id when it has one (for error messages)."""
    pid = row.get("problem_id")
    return f"{what} row {i}" + (f" (problem_id {pid!r})" if pid is not None else "")


def check_messages(value: Any, where: str, field: str) -> list[dict]:
    """Chat messages as `[{role, content}]` (extra keys dropped), or a ValueError naming
    the row and the field."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) == 0:
        raise ValueError(f"{where}: field {field!r} must be a non-empty list of chat messages, got {value!r:.80}")
    out = []
    for j, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise ValueError(f"{where}: field {field!r} message {j} is not a dict: {message!r:.80}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise ValueError(f"{where}: field {field!r} message {j} has no role")
        if not isinstance(content, str):
            raise ValueError(f"{where}: field {field!r} message {j} has no text content")
        out.append({"role": role, "content": content})
    return out


def load_private_model(model: Union[str, os.PathLike], *, dtype: str = "float32"):
    """`(causal_lm, tokenizer)` to train: a copy of what `load_causal_lm` loads (so the
    process-wide cached model stays untouched) and a fresh tokenizer."""
    from treesearch.models import drop_gguf_marker, load_causal_lm, load_tokenizer

    cached, _ = load_causal_lm(model, device="cpu", dtype=dtype)
    lm = copy.deepcopy(cached)
    drop_gguf_marker(lm, model)
    tokenizer = load_tokenizer(model)
    return lm, tokenizer


class StepTimer:
    """A Trainer callback recording each optimizer step's wall time, and logging progress
    (step k of n, seconds per step) at most every `every` seconds."""

    def __init__(self, what: str = "training", every: float = 30.0):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                now = time.perf_counter()
                timer.seconds.append(now - timer.start)
                if now - timer.logged >= every:
                    timer.logged = now
                    recent = timer.seconds[-20:]
                    log.info("%s: step %d of %d, %.2f s/step", what, state.global_step, state.max_steps,
                             sum(recent) / len(recent))

        self.start = 0.0
        self.logged = time.perf_counter()
        self.seconds: list[float] = []
        self.callback = Callback()


def quiet(trainer) -> None:
    """Drop the Trainer's per-step log printing (the log history is still kept)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def checkpointing_arg(config_class: Any, enabled: bool) -> dict:
    """The activation-checkpointing switch under its name in `config_class`
    (`activation_checkpointing` since transformers 5.2x, `gradient_checkpointing` before;
    TRL's config defaults the old name to True)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: bool(enabled)}


def trainer_arguments(config_class: Any, output_dir: Union[str, os.PathLike], *, epochs: float, max_steps: int,
                      batch_size: int, lr: float, seed: int, gradient_checkpointing: bool = False,
                      report_to: Union[str, Sequence[str]] = "none", **extra: Any):
    """`config_class` (transformers' TrainingArguments or TRL's SFTConfig) with the
    settings both trainers share: bf16 on GPUs that support it, the CPU when there is no
    GPU, no checkpoints or evaluation during training, quiet logging every step, reporting
    to `report_to` ("none", or the integrations transformers knows: "tensorboard",
    "wandb", ... when installed); `extra` adds or overrides fields."""
    import torch

    cuda = torch.cuda.is_available()
    settings = dict(
        output_dir=os.fspath(output_dir),
        num_train_epochs=float(epochs),
        max_steps=int(max_steps),
        per_device_train_batch_size=int(batch_size),
        learning_rate=float(lr),
        seed=int(seed),
        data_seed=int(seed),
        bf16=use_bf16(),
        fp16=False,
        use_cpu=not cuda,
        save_strategy="no",
        eval_strategy="no",
        report_to=report_to,
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        **checkpointing_arg(config_class, gradient_checkpointing),
    )
    settings.update(extra)
    return config_class(**settings)


def use_bf16() -> bool:
    """bf16 mixed precision on CUDA GPUs that support it; fp32 on CPU (CPU autocast is slow)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def step_limit(max_steps: Optional[int], rows: int, epochs: float, batch_size: int, accumulation: int = 1) -> int:
    """Trainer's `max_steps`: -1 (train `epochs`) when no cap is given, else the cap, but
    never more steps than `epochs` over `rows` would take (a cap must not turn 2 rows
    into 15 epochs)."""
    if not max_steps:
        return -1
    per_epoch = max(1, math.ceil(math.ceil(rows / max(batch_size, 1)) / max(accumulation, 1)))
    return max(1, min(int(max_steps), math.ceil(per_epoch * float(epochs))))
