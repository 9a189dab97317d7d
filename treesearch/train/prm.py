"""Training a value-head process reward model on stepwise rows with float targets.

Data: rows `{prompt, completions: list[str], labels: list[float]}` (plus optional
`problem_id`, `source`, ...), as `treesearch.harvest` writes them. `labels[k]` is the value
target in [0, 1] of the solution after step k (ReST-MCTS* inferred values, Monte Carlo
estimates, or 0/1); targets stay floats from the data to the loss.

Prompt convention (shared with `critics.prm.PRMCritic`): the prompt of a row is the
state's prompt as the search saw it, i.e. `State.prompt` / `Task.prompt(problem)`: chat
messages (`[{"role", "content"}, ...]`, what the built-in tasks produce) or a plain
string. It is read from `prompt_messages` when the row has that field and it is not null
(what `treesearch.harvest` writes beside a plain-text `prompt`), else from `prompt`
(messages or a string). Training and scoring both turn it into text with
`treesearch.prompting.render_prompt` using the PRM's own tokenizer (messages go through
its chat template with the assistant turn opened; a plain string is used verbatim, never
wrapped as a user turn), then append the steps with
`critics.prm_model.encode_steps(..., PRMFormat("value_head"))`. So a row is encoded
exactly like `PRMCritic` encodes `State(prompt=<that prompt>, steps=completions)`.
Writers must therefore keep the task's chat messages (in `prompt_messages` or `prompt`)
when the task's prompt is chat messages, and leave `prompt_messages` null when the
task's prompt is a plain string.

Model: `ValueHeadModel` (causal-LM backbone + scalar head); a step's value is
sigmoid(head) at the step's last token. Loss: "bce" (binary cross-entropy with logits on
the soft targets) or "mse" (squared error of sigmoid values), averaged over steps.
The folder written by `ValueHeadModel.save_pretrained` loads in `PRMCritic(folder)`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from critics.prm_model import PRMFormat, encode_steps, load_value_head, value_head_file
from treesearch.prompting import has_demonstrations
from treesearch.prompting import render_prompt
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

LOSSES = ("bce", "mse")
PRM_FIELDS = ("prompt", "completions", "labels")


def value_head_format() -> PRMFormat:
    """The step format of treesearch's own PRMs (no separator; scored at each step's last token)."""
    return PRMFormat("value_head")


# ----------------------------------------------------------------------------------------
# Data


def prm_example(row: Mapping, i: int, what: str = "PRM data") -> dict:
    """One checked `{prompt, completions, labels}` example (labels as floats; the prompt
    from `prompt_messages` when present and not null, else `prompt`), or a ValueError
    naming the row and the field."""
    where = row_name(what, i, row)
    has_messages = row.get("prompt_messages") is not None
    for field in PRM_FIELDS:
        if field not in row and not (field == "prompt" and has_messages):
            raise ValueError(f"{where}: missing field {field!r}")
    if has_messages:
        prompt = check_messages(row["prompt_messages"], where, "prompt_messages")
    elif isinstance(row["prompt"], str):
        prompt = row["prompt"]
        if not prompt:
            raise ValueError(f"{where}: field 'prompt' is empty")
    else:
        prompt = check_messages(row["prompt"], where, "prompt")
    steps = row["completions"]
    if not isinstance(steps, Sequence) or isinstance(steps, (str, bytes)) or len(steps) == 0:
        raise ValueError(f"{where}: field 'completions' must be a non-empty list of step strings, got {steps!r:.80}")
    for k, step in enumerate(steps):
        if not isinstance(step, str) or not step:
            raise ValueError(f"{where}: field 'completions' step {k} must be a non-empty string, got {step!r:.80}")
    labels = row["labels"]
    if not isinstance(labels, Sequence) or isinstance(labels, (str, bytes)):
        raise ValueError(f"{where}: field 'labels' must be a list of floats, got {labels!r:.80}")
    if len(labels) != len(steps):
        raise ValueError(
            f"{where}: field 'labels' has {len(labels)} values but 'completions' has {len(steps)} steps"
        )
    values = []
    for k, label in enumerate(labels):
        if isinstance(label, (str, bytes)) or label is None:
            raise ValueError(f"{where}: field 'labels' value {k} is not a number: {label!r}")
        try:
            value = float(label)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: field 'labels' value {k} is not a number: {label!r}") from None
        if not (0.0 <= value <= 1.0):  # also rejects NaN
            raise ValueError(f"{where}: field 'labels' value {k} = {label!r} is outside [0, 1]")
        values.append(value)
    return {"prompt": prompt, "completions": list(steps), "labels": values, "problem_id": row.get("problem_id")}


def encode_example(tokenizer: Any, example: Mapping, fmt: PRMFormat, max_length: Optional[int] = None) -> Optional[dict]:
    """Token ids, scored positions and float targets of one example, encoded exactly as
    `PRMCritic` encodes `State(prompt=example["prompt"], steps=example["completions"])`.
    Steps scored at or beyond `max_length` are dropped; None when no step is left."""
    text = render_prompt(tokenizer, example["prompt"])
    ids, positions = encode_steps(tokenizer, text, example["completions"], fmt)
    targets = [float(t) for t in example["labels"]]
    if max_length is not None:
        kept = [k for k, p in enumerate(positions) if p < max_length]
        if not kept:
            return None
        positions = [positions[k] for k in kept]
        targets = [targets[k] for k in kept]
        ids = ids[: positions[-1] + 1]
    return {"input_ids": ids, "positions": positions, "targets": targets}


class PRMCollator:
    """Pads a batch of encoded examples (right padding, like `PRMCritic`).

    Returns `input_ids` / `attention_mask` (long, [batch, length]), `positions` (long,
    [batch, steps], 0 where padded), `targets` (float32, [batch, steps]) and `step_mask`
    (bool, [batch, steps])."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: Sequence[Mapping]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        steps = max(len(f["positions"]) for f in features)
        n = len(features)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        positions = torch.zeros((n, steps), dtype=torch.long)
        targets = torch.zeros((n, steps), dtype=torch.float32)
        step_mask = torch.zeros((n, steps), dtype=torch.bool)
        for i, f in enumerate(features):
            length, count = len(f["input_ids"]), len(f["positions"])
            ids[i, :length] = torch.tensor(f["input_ids"], dtype=torch.long)
            mask[i, :length] = 1
            positions[i, :count] = torch.tensor(f["positions"], dtype=torch.long)
            targets[i, :count] = torch.tensor(f["targets"], dtype=torch.float32)
            step_mask[i, :count] = True
        return {"input_ids": ids, "attention_mask": mask, "positions": positions, "targets": targets, "step_mask": step_mask}


def split_eval(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out about `fraction` of the rows, whole problems at a time (by `problem_id`;
    rows without one are their own group), chosen by `seed`. Keeps at least one
    training row; returns `(train, eval)`."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    groups: dict[Any, list[int]] = {}
    for i, ex in enumerate(examples):
        key = ex.get("problem_id")
        groups.setdefault(("row", i) if key is None else ("id", key), []).append(i)
    keys = list(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    want = max(1, int(round(fraction * len(examples))))
    held: set[int] = set()
    for g in order:
        rows = groups[keys[g]]
        if len(held) + len(rows) > len(examples) - 1:
            continue
        held.update(rows)
        if len(held) >= want:
            break
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]


# ----------------------------------------------------------------------------------------
# Loss and metrics


def prm_loss(logits, targets, loss: str = "bce"):
    """Mean step loss: BCE-with-logits on float targets, or MSE of sigmoid(logits)."""
    import torch.nn.functional as F

    logits = logits.float()
    targets = targets.float()
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    if loss == "mse":
        return F.mse_loss(logits.sigmoid(), targets)
    raise ValueError(f"unknown PRM loss {loss!r}; choose from {LOSSES}")


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve (ties count one half); NaN when a class is missing."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = mean_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def step_logits(model, batch):
    """Value logits at each batch row's scored positions, [batch, steps]."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return logits.gather(1, batch["positions"])


def evaluate_prm(model, encoded: Sequence[dict], collator: PRMCollator, *, loss: str = "bce", batch_size: int = 8) -> dict:
    """`loss` (the training loss, over all held-out steps), `auc` (labels >= 0.5 as
    positives vs predicted values), `accuracy` (prediction >= 0.5 agrees with label >=
    0.5), `mse` and `num_steps` of `model` on encoded examples."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    values, targets, logits_all = [], [], []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collator(encoded[start : start + batch_size]).items()}
            logits = step_logits(model, batch).float()
            mask = batch["step_mask"]
            logits_all.append(logits[mask].cpu())
            targets.append(batch["targets"][mask].cpu())
    model.train(was_training)
    logits = torch.cat(logits_all)
    target = torch.cat(targets)
    values = logits.sigmoid().numpy().astype(np.float64)
    labels = target.numpy().astype(np.float64)
    return {
        "loss": float(prm_loss(logits, target, loss)),
        "auc": roc_auc(values, labels >= 0.5),
        "accuracy": float(np.mean((values >= 0.5) == (labels >= 0.5))),
        "mse": float(np.mean((values - labels) ** 2)),
        "num_steps": int(len(labels)),
    }


def _trainer_class():
    from transformers import Trainer

    class PRMTrainer(Trainer):
        """A Trainer whose loss is the PRM step loss on float targets."""

        def __init__(self, *args, prm_loss_type: str = "bce", **kwargs):
            super().__init__(*args, **kwargs)
            self.prm_loss_type = prm_loss_type

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits = step_logits(model, inputs)
            mask = inputs["step_mask"]
            loss = prm_loss(logits[mask], inputs["targets"][mask], self.prm_loss_type)
            return (loss, {"step_logits": logits}) if return_outputs else loss

    return PRMTrainer


# ----------------------------------------------------------------------------------------
# Training


def train_prm(
    base_model: Union[str, os.PathLike],
    data: DataArg,
    output_dir: Union[str, os.PathLike],
    *,
    loss: str = "bce",
    epochs: float = 1,
    lr: float = 2e-5,
    head_lr: Optional[float] = None,
    batch_size: int = 4,
    max_length: Optional[int] = 1024,
    threads: Optional[int] = None,
    seed: int = 0,
    eval_data: Optional[DataArg] = None,
    eval_fraction: float = 0.1,
    max_steps: Optional[int] = None,
    report_to: Union[str, Sequence[str]] = "none",
) -> dict:
    """Train a value-head PRM on `base_model` ("smollm2", a HF folder, or a treesearch PRM
    folder to continue from) with stepwise rows; save to `output_dir` for `PRMCritic`.

    `loss`: "bce" or "mse". `lr` for the backbone, `head_lr` (default `lr`) for the value
    head. `eval_data`: held-out rows; without it, `eval_fraction` of the rows (whole
    problems, by `problem_id`) is held out. `max_length`: steps scored beyond it are
    dropped (rows with none left are skipped). `max_steps` (if given) caps the steps of `epochs`.

    Returns a dict: `output_dir`, `train_loss`, `steps`, `step_seconds`,
    `num_train_rows`, `num_eval_rows`, `num_train_labels`, `skipped_rows`, and on held-out
    rows before and after training `eval_loss_before` / `eval_loss`, `eval_auc_before` /
    `eval_auc` (NaN when held-out labels are all on one side of 0.5),
    `eval_accuracy_before` / `eval_accuracy`, `eval_mse_before` / `eval_mse`.
    """
    require_training_stack("train_prm", ("accelerate",))  # transformers' Trainer needs it
    import torch
    from transformers import TrainingArguments, set_seed

    from critics.prm_model import ValueHeadModel

    if loss not in LOSSES:
        raise ValueError(f"unknown PRM loss {loss!r}; choose from {LOSSES}")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    examples = [prm_example(r, i) for i, r in enumerate(read_rows(data, "PRM data"))]
    if eval_data is not None:
        train_rows = examples
        eval_rows = [prm_example(r, i, "PRM eval data") for i, r in enumerate(read_rows(eval_data, "PRM eval data"))]
    else:
        train_rows, eval_rows = split_eval(examples, eval_fraction, seed)

    lm, tokenizer = load_private_model(base_model)
    fmt = value_head_format()
    if not any(has_demonstrations(ex["prompt"]) for ex in train_rows):
        # it never sees worked examples: a few-shot search's states are scored without theirs
        fmt.prompts = "zero_shot"
    train_encoded = [e for e in (encode_example(tokenizer, ex, fmt, max_length) for ex in train_rows) if e]
    eval_encoded = [e for e in (encode_example(tokenizer, ex, fmt, max_length) for ex in eval_rows) if e]
    skipped = len(train_rows) + len(eval_rows) - len(train_encoded) - len(eval_encoded)
    if not train_encoded:
        raise ValueError(f"PRM data: no training row has a step within max_length={max_length} tokens")

    set_seed(int(seed))
    model = ValueHeadModel(lm)
    head_file = value_head_file(Path(os.fspath(base_model)).expanduser())
    if head_file is not None:  # continue from a treesearch PRM folder
        model.head.load_state_dict(load_value_head(head_file))
    model.train()
    collator = PRMCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    output_dir = Path(output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    args = trainer_arguments(
        TrainingArguments,
        output_dir,
        epochs=epochs,
        max_steps=step_limit(max_steps, len(train_encoded), epochs, batch_size),
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        report_to=report_to,
        remove_unused_columns=False,
    )
    head_params = list(model.head.parameters())
    head_ids = {id(p) for p in head_params}
    backbone_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [
            {"params": backbone_params, "lr": float(lr)},
            {"params": head_params, "lr": float(head_lr if head_lr is not None else lr)},
        ],
        weight_decay=0.0,
    )
    timer = StepTimer("PRM")
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_encoded,
        data_collator=collator,
        optimizers=(optimizer, None),
        callbacks=[timer.callback],
        prm_loss_type=loss,
    )
    quiet(trainer)
    metrics: dict[str, Any] = {
        "output_dir": str(output_dir),
        "loss": loss,
        "num_train_rows": len(train_encoded),
        "num_eval_rows": len(eval_encoded),
        "num_train_labels": sum(len(e["targets"]) for e in train_encoded),
        "skipped_rows": skipped,
    }
    device = trainer.args.device
    if eval_encoded:
        before = evaluate_prm(model.to(device), eval_encoded, collator, loss=loss, batch_size=batch_size)
        metrics.update({f"eval_{k}_before": v for k, v in before.items() if k != "num_steps"})
    result = trainer.train()
    metrics["train_loss"] = float(result.training_loss)
    metrics["train_runtime"] = float(result.metrics.get("train_runtime", math.nan))
    metrics["steps"] = int(result.global_step)
    metrics["step_seconds"] = [round(s, 4) for s in timer.seconds]
    if eval_encoded:
        after = evaluate_prm(model, eval_encoded, collator, loss=loss, batch_size=batch_size)
        metrics.update({f"eval_{k}": v for k, v in after.items()})

    model = model.to("cpu").float().eval()
    model.causal_lm.config.use_cache = True
    model.save_pretrained(output_dir, tokenizer, fmt)
    record = {
        "kind": "prm",
        "base_model": os.fspath(base_model),
        "args": {
            "loss": loss, "epochs": epochs, "lr": lr, "head_lr": head_lr, "batch_size": batch_size,
            "max_length": max_length, "seed": seed, "eval_fraction": eval_fraction, "max_steps": max_steps,
        },
        "prompt_convention": (
            "render_prompt(tokenizer, prompt_messages if not null else prompt) + steps via "
            "encode_steps(PRMFormat('value_head')), as PRMCritic encodes State(prompt, steps)"
        ),
        "metrics": metrics,
    }
    (output_dir / TRAIN_RECORD).write_text(json.dumps(record, indent=2))
    return metrics
