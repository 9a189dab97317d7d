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
from treesearch.auc import roc_auc, within_problem_auc  # noqa: F401  (roc_auc: re-exported)
from treesearch.prompting import has_demonstrations, render_prompt
from treesearch.schemas import PRMTraining
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
    return {"input_ids": ids, "positions": positions, "targets": targets, "problem_id": example.get("problem_id")}


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


def step_logits(model, batch):
    """Value logits at each batch row's scored positions, [batch, steps]."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return logits.gather(1, batch["positions"])


def pair_loss(logits, targets, groups, margin: float = 0.1):
    """Mean logistic loss over the pairs of steps of one group (problem) whose targets
    differ by more than `margin`: the step with the higher target should get the higher
    logit. Zero when no such pair. This is what teaches a PRM to rank one problem's steps
    (BCE alone can be met by learning which problems are easy)."""
    import torch.nn.functional as F

    logits, targets = logits.float(), targets.float()
    higher = (targets[:, None] - targets[None, :] > margin) & (groups[:, None] == groups[None, :])
    if not bool(higher.any()):
        return logits.sum() * 0.0
    gaps = logits[:, None] - logits[None, :]
    return F.softplus(-gaps[higher]).mean()


def problem_groups(encoded: Sequence[dict], size: int, seed: int) -> list[dict]:
    """`encoded` rows packed into groups of at most `size` rows of one problem each
    (rows shuffled within a problem by `seed`; a row without a problem id is its own
    problem), in a seeded order: one group is one training batch for `pair_loss`."""
    by_problem: dict[Any, list[dict]] = {}
    for i, e in enumerate(encoded):
        key = e.get("problem_id")
        by_problem.setdefault(("row", i) if key is None else key, []).append(e)
    rng = np.random.default_rng(seed)
    groups = []
    for rows in by_problem.values():
        rows = [rows[k] for k in rng.permutation(len(rows))]
        groups += [{"rows": rows[k:k + size]} for k in range(0, len(rows), size)]
    return [groups[k] for k in rng.permutation(len(groups))]


class GroupCollator:
    """Batches of `problem_groups` groups: their rows padded by `PRMCollator`, plus
    `groups` (long, [rows]): which group each row came from."""

    def __init__(self, rows: "PRMCollator"):
        self.rows = rows

    def __call__(self, features: Sequence[Mapping]) -> dict:
        import torch

        flat = [row for f in features for row in f["rows"]]
        batch = self.rows(flat)
        batch["groups"] = torch.tensor([g for g, f in enumerate(features) for _ in f["rows"]], dtype=torch.long)
        return batch


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
    problems = np.array([str(e.get("problem_id")) for e in encoded for _ in range(len(e["targets"]))])
    return {
        "loss": float(prm_loss(logits, target, loss)),
        "auc": roc_auc(values, labels >= 0.5),
        "auc_within_problem": within_problem_auc(values, labels >= 0.5, problems),
        "accuracy": float(np.mean((values >= 0.5) == (labels >= 0.5))),
        "mse": float(np.mean((values - labels) ** 2)),
        "num_steps": int(len(labels)),
    }


def calibrate_head(model, encoded: Sequence[dict], collator: "PRMCollator", *, sample: int = 16,
                   logit_std: float = 0.5) -> None:
    """Start a fresh value head at the data's base rate: rescale its random weights so the
    logits on `sample` training rows spread by `logit_std`, and set its bias so their mean
    is the logit of the mean target. (A random head on a backbone's last hidden states
    gives logits of several units, confidently wrong, which the few hundred steps of a
    self-training round spend undoing instead of ranking steps.)"""
    import torch

    rows = list(encoded[:sample])
    targets = np.concatenate([np.asarray(e["targets"], dtype=np.float64) for e in encoded])
    prior = float(np.clip(targets.mean(), 0.02, 0.98)) if len(targets) else 0.5
    device = next(model.parameters()).device
    with torch.no_grad():
        model.head.bias.zero_()
        batch = {k: v.to(device) for k, v in collator(rows).items()}
        logits = step_logits(model, batch).float()[batch["step_mask"]]
        spread = float(logits.std()) if logits.numel() > 1 else 0.0
        if spread > 0:
            model.head.weight.mul_(logit_std / spread)
            logits = logits * (logit_std / spread)
        model.head.bias.fill_(math.log(prior / (1 - prior)) - float(logits.mean()))


def _trainer_class():
    from transformers import Trainer

    class PRMTrainer(Trainer):
        """A Trainer whose loss is the PRM step loss on float targets."""

        def __init__(self, *args, prm_loss_type: str = "bce", rank_weight: float = 0.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.prm_loss_type = prm_loss_type
            self.rank_weight = float(rank_weight)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits = step_logits(model, inputs)
            mask = inputs["step_mask"]
            loss = prm_loss(logits[mask], inputs["targets"][mask], self.prm_loss_type)
            if self.rank_weight > 0:
                groups = inputs["groups"][:, None].expand_as(mask)[mask]
                loss = loss + self.rank_weight * pair_loss(logits[mask], inputs["targets"][mask], groups)
            return (loss, {"step_logits": logits}) if return_outputs else loss

    return PRMTrainer


# ----------------------------------------------------------------------------------------
# Training


def train_prm(
    base_model: Union[str, os.PathLike],
    data: DataArg,
    output_dir: Union[str, os.PathLike],
    *,
    loss: str = PRMTraining.loss,
    epochs: float = PRMTraining.epochs,
    lr: float = PRMTraining.lr,
    head_lr: Optional[float] = None,
    rank_weight: float = PRMTraining.rank_weight,
    batch_size: int = PRMTraining.batch_size,
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
    head. A fresh head starts at the data's base rate (`calibrate_head`). `rank_weight` >
    0 adds `pair_loss` with that weight, each batch then being `batch_size` rows of one
    problem (`problem_groups`), so the PRM learns to rank a problem's steps, not only
    which problems are easy. `eval_data`: held-out rows; without it, `eval_fraction` of the rows (whole
    problems, by `problem_id`) is held out. `max_length`: steps scored beyond it are
    dropped (rows with none left are skipped). `max_steps` (if given) caps the steps of `epochs`.

    Returns a dict: `output_dir`, `train_loss`, `steps`, `step_seconds`,
    `num_train_rows`, `num_eval_rows`, `num_train_labels`, `skipped_rows`, and on held-out
    rows before and after training `eval_loss_before` / `eval_loss`, `eval_auc_before` /
    `eval_auc` (NaN when held-out labels are all on one side of 0.5),
    `eval_auc_within_problem_before` / `eval_auc_within_problem` (`within_problem_auc`),
    `eval_accuracy_before` / `eval_accuracy`, `eval_mse_before` / `eval_mse`.
    """
    require_training_stack("train_prm", ("accelerate",))  # transformers' Trainer needs it
    import torch
    from transformers import TrainingArguments, set_seed

    from critics.prm_model import ValueHeadModel

    if loss not in LOSSES:
        raise ValueError(f"unknown PRM loss {loss!r}; choose from {LOSSES}")
    if not (math.isfinite(rank_weight) and rank_weight >= 0):
        raise ValueError(f"rank_weight must be >= 0, got {rank_weight}")
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
    else:
        calibrate_head(model, train_encoded, PRMCollator(tokenizer.pad_token_id or 0))
    model.train()
    collator = PRMCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    output_dir = Path(output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    # with rank_weight, a batch is `batch_size` rows of one problem (pairs to rank)
    train_items = problem_groups(train_encoded, batch_size, seed) if rank_weight > 0 else train_encoded
    per_batch = 1 if rank_weight > 0 else batch_size
    args = trainer_arguments(
        TrainingArguments,
        output_dir,
        epochs=epochs,
        max_steps=step_limit(max_steps, len(train_items), epochs, per_batch),
        batch_size=per_batch,
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
        train_dataset=train_items,
        data_collator=GroupCollator(collator) if rank_weight > 0 else collator,
        optimizers=(optimizer, None),
        callbacks=[timer.callback],
        prm_loss_type=loss,
        rank_weight=rank_weight,
    )
    quiet(trainer)
    metrics: dict[str, Any] = {
        "output_dir": str(output_dir),
        "loss": loss,
        "rank_weight": rank_weight,
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
            "loss": loss, "epochs": epochs, "lr": lr, "head_lr": head_lr, "rank_weight": rank_weight,
            "batch_size": batch_size,
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
