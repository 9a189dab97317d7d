"""Supervised fine-tuning of the policy on harvested traces (TRL's SFTTrainer).

Data: conversational prompt-completion rows, as `treesearch.harvest` writes them:
`prompt` (chat messages `{role, content}`, the task's prompt) and `completion` (the
assistant message(s) holding the solution). A row with only `messages` is split before
its trailing assistant turn(s). Other columns (`messages`, `problem_id`, `value`, ...) are
ignored. The loss covers the completion tokens only (the chat template's end-of-turn
token included, so the model learns to stop); the prompt is rendered by the tokenizer's
chat template with the assistant turn opened, which is exactly what `HFPolicy` feeds the
model at search time (`treesearch.prompting.render_prompt`).

Full fine-tuning, or LoRA (peft) whose weights are merged into the base before saving:
either way the output folder is a plain Hugging Face causal-LM folder (weights, config,
tokenizer with its chat template) that `load_causal_lm(folder)` and `HFPolicy(folder)`
load, plus `treesearch_train.json` (arguments and metrics).

API facts relied on (TRL 1.x, checked against trl 1.16.0's `sft_config.py` /
`sft_trainer.py`): `SFTConfig(max_length=..., completion_only_loss=..., packing=...)`
(`max_seq_length` is gone), `SFTTrainer(model=<PreTrainedModel>, processing_class=
<tokenizer>, peft_config=<LoraConfig>)`, conversational prompt-completion datasets are
tokenized as `apply_chat_template(prompt, add_generation_prompt=True)` vs the template
of prompt + completion, with the difference as the loss mask. TRL's config turns `bf16`
on by default and gradient checkpointing on by default; both are set explicitly here.
SFTTrainer also patches the model object's `forward` (a fused LM head), so training
always runs on a private copy of the model, never on the one `load_causal_lm` caches.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from treesearch.schemas import PolicyTraining
from treesearch.train.common import (
    TRAIN_RECORD,
    DataArg,
    StepTimer,
    check_messages,
    load_private_model,
    quiet,
    read_rows,
    require_training_stack,
    row_name,
    step_limit,
    trainer_arguments,
)

# ----------------------------------------------------------------------------------------
# SFT


def sft_example(row: Mapping, i: int, what: str = "SFT data") -> dict:
    """One checked `{prompt, completion}` example from a data row."""
    where = row_name(what, i, row)
    if "prompt" in row or "completion" in row:
        for field in ("prompt", "completion"):
            if field not in row:
                raise ValueError(f"{where}: missing field {field!r}")
        prompt = check_messages(row["prompt"], where, "prompt")
        completion = check_messages(row["completion"], where, "completion")
    elif "messages" in row:
        messages = check_messages(row["messages"], where, "messages")
        cut = len(messages)
        while cut > 0 and messages[cut - 1]["role"] == "assistant":
            cut -= 1
        if cut == len(messages) or cut == 0:
            raise ValueError(f"{where}: field 'messages' must end with assistant message(s) after a prompt")
        prompt, completion = messages[:cut], messages[cut:]
    else:
        raise ValueError(f"{where}: missing field 'prompt' (and 'completion'); no 'messages' either")
    for j, message in enumerate(completion):
        if message["role"] != "assistant":
            raise ValueError(f"{where}: field 'completion' message {j} has role {message['role']!r}, not 'assistant'")
    if not any(m["content"].strip() for m in completion):
        raise ValueError(f"{where}: field 'completion' is empty")
    return {"prompt": prompt, "completion": completion}


def build_sft_trainer(
    lm: Any,
    tokenizer: Any,
    examples: list[dict],
    output_dir: Union[str, os.PathLike],
    *,
    eval_examples: Optional[list[dict]] = None,
    lora: bool = PolicyTraining.lora,
    epochs: float = PolicyTraining.epochs,
    lr: float = PolicyTraining.lr,
    batch_size: int = PolicyTraining.batch_size,
    max_length: Optional[int] = PolicyTraining.max_length,
    seed: int = 0,
    max_steps: Optional[int] = None,
    gradient_accumulation_steps: int = 1,
    lora_rank: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    gradient_checkpointing: bool = False,
    report_to: Union[str, Sequence[str]] = "none",
):
    """The configured `trl.SFTTrainer` (and its step timer) behind `train_sft`, on a
    model the caller owns and checked `{prompt, completion}` examples."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the model's tokenizer has no chat template; conversational SFT needs one")
    config = trainer_arguments(
        SFTConfig,
        output_dir,
        epochs=epochs,
        max_steps=step_limit(max_steps, len(examples), epochs, batch_size, gradient_accumulation_steps),
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        gradient_checkpointing=gradient_checkpointing,
        report_to=report_to,
        per_device_eval_batch_size=int(batch_size),
        gradient_accumulation_steps=int(gradient_accumulation_steps),
        max_length=max_length,
        packing=False,
        completion_only_loss=True,
        assistant_only_loss=False,
    )
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=int(lora_rank),
            lora_alpha=int(lora_alpha),
            lora_dropout=float(lora_dropout),
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    timer = StepTimer("policy SFT")
    trainer = SFTTrainer(
        model=lm,
        args=config,
        train_dataset=Dataset.from_list(examples),
        eval_dataset=Dataset.from_list(eval_examples) if eval_examples else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer.callback],
    )
    quiet(trainer)
    return trainer, timer


def train_sft(
    model: Union[str, os.PathLike],
    data: DataArg,
    output_dir: Union[str, os.PathLike],
    *,
    lora: bool = PolicyTraining.lora,
    epochs: float = PolicyTraining.epochs,
    lr: Optional[float] = None,
    batch_size: int = PolicyTraining.batch_size,
    max_length: Optional[int] = PolicyTraining.max_length,
    threads: Optional[int] = None,
    seed: int = 0,
    eval_data: Optional[DataArg] = None,
    max_steps: Optional[int] = None,
    gradient_accumulation_steps: int = 1,
    lora_rank: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    gradient_checkpointing: bool = False,
    report_to: Union[str, Sequence[str]] = "none",
) -> dict:
    """Fine-tune `model` ("smollm2", a HF folder or id) on SFT rows; save to `output_dir`.

    `lora`: train LoRA adapters on all linear layers (rank `lora_rank`) and merge them
    into the weights before saving; else full fine-tuning. `lr` defaults to 2e-5 (full)
    or 2e-4 (LoRA). `max_length` truncates tokenized rows (prompt + completion).
    `max_steps` (if given) caps the steps of `epochs`. `eval_data`: rows whose completion loss
    is measured before and after training. `threads` sets torch's CPU thread count.
    `report_to`: the Trainer's loggers ("none", "tensorboard", "wandb", ... when installed).

    Returns a dict: `output_dir`, `train_loss`, `train_runtime`, `steps`,
    `step_seconds` (per optimizer step), `num_train_rows`, and with `eval_data`
    `eval_loss_before` / `eval_loss` (mean completion-token NLL) and
    `eval_mean_token_accuracy`.
    """
    require_training_stack("train_sft", ("trl", "accelerate") + (("peft",) if lora else ()))
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    examples = [sft_example(r, i) for i, r in enumerate(read_rows(data, "SFT data"))]
    eval_examples = None
    if eval_data is not None:
        eval_examples = [sft_example(r, i, "SFT eval data") for i, r in enumerate(read_rows(eval_data, "SFT eval data"))]
    if lr is None:
        lr = 2e-4 if lora else 2e-5
    lm, tokenizer = load_private_model(model)
    output_dir = Path(output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    options = {
        "lora": bool(lora), "epochs": epochs, "lr": lr, "batch_size": batch_size, "max_length": max_length,
        "seed": seed, "max_steps": max_steps, "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_checkpointing": gradient_checkpointing, "report_to": report_to,
        **({"lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout} if lora else {}),
    }
    trainer, timer = build_sft_trainer(lm, tokenizer, examples, output_dir, eval_examples=eval_examples, **options)
    metrics: dict[str, Any] = {"output_dir": str(output_dir), "num_train_rows": len(examples), "lora": bool(lora)}
    if eval_examples:
        metrics["eval_loss_before"] = float(trainer.evaluate()["eval_loss"])
    result = trainer.train()
    metrics["train_loss"] = float(result.training_loss)
    metrics["train_runtime"] = float(result.metrics.get("train_runtime", math.nan))
    metrics["steps"] = int(result.global_step)
    metrics["step_seconds"] = [round(s, 4) for s in timer.seconds]
    if eval_examples:
        after = trainer.evaluate()
        metrics["eval_loss"] = float(after["eval_loss"])
        if "eval_mean_token_accuracy" in after:
            metrics["eval_mean_token_accuracy"] = float(after["eval_mean_token_accuracy"])

    trained = trainer.model
    if lora:
        trained = trained.merge_and_unload()
    trained = trained.to("cpu").float().eval()
    trained.config.use_cache = True
    if getattr(trained.generation_config, "pad_token_id", None) is None:
        trained.generation_config.pad_token_id = tokenizer.pad_token_id
    trained.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    record = {"kind": "sft", "base_model": os.fspath(model), "args": options, "metrics": metrics}
    (output_dir / TRAIN_RECORD).write_text(json.dumps(record, indent=2))
    return metrics
