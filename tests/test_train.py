"""treesearch.train: policy SFT (TRL, full and LoRA) and value-head PRM training on the
tiny random Llama; data checks; the prompt convention shared with PRMCritic."""

from __future__ import annotations

import asyncio
import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from critics.prm import PRMCritic
from critics.prm_model import PRMFormat, ValueHeadModel
from treesearch.prompting import render_prompt
from treesearch.train import train_prm, train_sft
from treesearch.auc import within_problem_auc
from treesearch.train.prm import (
    GroupCollator,
    PRMCollator,
    _trainer_class,
    calibrate_head,
    encode_example,
    pair_loss,
    prm_example,
    problem_groups,
    roc_auc,
    split_eval,
)
from treesearch.train.common import load_private_model
from treesearch.train.sft import build_sft_trainer, sft_example
from treesearch.types import Problem, SamplingParams, State

SYSTEM = {"role": "system", "content": "Solve step by step, one step per line."}


def sft_rows(n: int = 8) -> list[dict]:
    rows = []
    for i in range(n):
        prompt = [SYSTEM, {"role": "user", "content": f"What is {i} + {i}?"}]
        completion = [{"role": "assistant", "content": f"{i} + {i} = {2 * i}.\nThe answer is {2 * i}."}]
        rows.append(
            {"prompt": prompt, "completion": completion, "messages": prompt + completion, "problem_id": str(i), "value": 1.0}
        )
    return rows


def prm_rows(n: int, seed: int) -> list[dict]:
    """Steps saying "good" are worth 0.9, steps saying "bad" 0.1."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        steps, labels = [], []
        for k in range(rnd.randint(1, 3)):
            good = rnd.random() < 0.5
            steps.append(f"Step {k + 1}: {'good' if good else 'bad'}\n")
            labels.append(0.9 if good else 0.1)
        rows.append(
            {
                "prompt": [SYSTEM, {"role": "user", "content": f"Problem {i}: find x."}],
                "completions": steps,
                "labels": labels,
                "problem_id": f"s{seed}-{i}",
                "source": "synthetic",
            }
        )
    return rows


def harvest_shaped(rows: list[dict]) -> list[dict]:
    """Rows as treesearch.harvest writes them: plain-text `prompt` + `prompt_messages`."""
    return [
        {**r, "prompt": "\n\n".join(m["content"] for m in r["prompt"]), "prompt_messages": r["prompt"]} for r in rows
    ]


def write_parquet(rows: list[dict], path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def policy_generates(folder) -> None:
    """The trained folder loads as a policy on transformers, and converts to and runs on
    OpenVINO with the same greedy step (a self-training round's new policy)."""
    from treesearch.policy.hf import HFPolicy
    from treesearch.policy.openvino import OpenVINOPolicy

    policy = HFPolicy(str(folder), device="cpu")
    state = State(Problem("q", "What is 1 + 1?"), [SYSTEM, {"role": "user", "content": "What is 1 + 1?"}])
    steps = asyncio.run(policy.expand([state], 2, SamplingParams(temperature=1.0, max_new_tokens=6, stop=("\n",), seed=0)))
    assert len(steps) == 1 and len(steps[0]) == 2
    assert all(s.num_tokens >= 1 for s in steps[0])
    engine = OpenVINOPolicy(str(folder), threads=1, cache_dir=str(folder.parent / "ir-cache"))
    try:
        greedy = SamplingParams(temperature=0, max_new_tokens=8, stop=("\n",))
        [[ours]], [[theirs]] = (asyncio.run(p.expand([state], 1, greedy)) for p in (engine, policy))
        assert ours.token_ids == theirs.token_ids
    finally:
        engine.shutdown()


# ----------------------------------------------------------------------------------------
# SFT


def test_sft_loss_is_on_the_completion_rendered_as_the_policy_sees_it(tiny_model_dir, tmp_path):
    lm, tok = load_private_model(tiny_model_dir)
    examples = [sft_example(r, i) for i, r in enumerate(sft_rows(2))]
    trainer, _ = build_sft_trainer(lm, tok, examples, tmp_path)
    row = trainer.train_dataset[0]
    prompt_ids = tok(render_prompt(tok, examples[0]["prompt"]), add_special_tokens=False)["input_ids"]
    labels = row["labels"]
    assert row["input_ids"][: len(prompt_ids)] == prompt_ids  # the policy's prompt, token for token
    assert all(x == -100 for x in labels[: len(prompt_ids)])
    trained = [x for x in labels[len(prompt_ids) :] if x != -100]
    assert len(trained) == len(labels) - len(prompt_ids)
    text = tok.decode(trained)
    assert text.startswith(examples[0]["completion"][0]["content"])
    assert tok.eos_token in text  # the end of turn is learned, so generation stops


def test_sft_full_changes_weights_lowers_loss_and_saves_a_policy_folder(tiny_model_dir, tmp_path):
    rows = sft_rows(8)
    out = tmp_path / "sft"
    metrics = train_sft(
        tiny_model_dir, write_parquet(rows, tmp_path / "sft.parquet"), out, epochs=3, lr=1e-3, batch_size=4, eval_data=rows
    )
    assert metrics["steps"] == 6 and len(metrics["step_seconds"]) == 6
    assert metrics["eval_loss"] < metrics["eval_loss_before"] - 0.1
    before, after = weights(tiny_model_dir), weights(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(t.dtype == torch.float32 for t in after.values())
    assert (out / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (out / "tokenizer_config.json").read_text()
    )
    assert json.loads((out / "treesearch_train.json").read_text())["kind"] == "sft"
    policy_generates(out)


def test_sft_lora_saves_a_merged_plain_folder(tiny_model_dir, tmp_path):
    rows = sft_rows(4)
    out = tmp_path / "lora"
    metrics = train_sft(tiny_model_dir, rows, out, lora=True, lora_rank=4, epochs=2, lr=1e-2, batch_size=2, eval_data=rows)
    assert metrics["lora"] and metrics["eval_loss"] < metrics["eval_loss_before"]
    assert not (out / "adapter_config.json").exists()
    before, after = weights(tiny_model_dir), weights(out)
    assert before.keys() == after.keys()  # no lora_A / lora_B / base_layer names
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)
    policy_generates(out)


@pytest.mark.slow  # loads a model or runs the CLI in a subprocess
def test_smollm2_training_copy_is_plain_and_the_cached_model_untouched(tmp_path):
    """SmolLM2 from GGUF is dequantised but keeps transformers' GGUF quantizer attached,
    which Trainer refuses and save_pretrained cannot write; the training copy drops it."""
    from treesearch.models import load_causal_lm

    lm, _ = load_private_model("smollm2")
    assert getattr(lm, "hf_quantizer", None) is None and not lm.is_quantized
    lm.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    cached, _ = load_causal_lm("smollm2", device="cpu", dtype="float32")
    assert cached is not lm and getattr(cached, "hf_quantizer", None) is not None


def test_sft_bad_rows_name_the_row_and_field(tiny_model_dir, tmp_path):
    rows = sft_rows(3)
    del rows[1]["completion"]
    with pytest.raises(ValueError, match=r"row 1 \(problem_id '1'\): missing field 'completion'"):
        train_sft(tiny_model_dir, rows, tmp_path / "x")
    rows = sft_rows(3)
    rows[2]["completion"] = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match=r"row 2 .*'completion' message 0 has role 'user'"):
        train_sft(tiny_model_dir, rows, tmp_path / "x")
    # a messages-only row is split before its assistant turn
    only = {"messages": sft_rows(1)[0]["messages"]}
    ex = sft_example(only, 0)
    assert ex["prompt"] == sft_rows(1)[0]["prompt"] and ex["completion"] == sft_rows(1)[0]["completion"]


# ----------------------------------------------------------------------------------------
# PRM


def test_prm_learns_a_step_signal_and_loads_in_the_critic(tiny_model_dir, tmp_path):
    train = write_parquet(harvest_shaped(prm_rows(48, seed=0)), tmp_path / "prm.parquet")
    held = prm_rows(16, seed=1)
    out = tmp_path / "prm"
    metrics = train_prm(tiny_model_dir, train, out, epochs=6, lr=1e-3, head_lr=3e-3, batch_size=8, eval_data=held)
    assert metrics["num_train_rows"] == 48 and metrics["num_eval_rows"] == 16
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert metrics["eval_auc"] >= 0.9 and metrics["eval_auc"] > metrics["eval_auc_before"]
    assert metrics["eval_accuracy"] >= 0.8

    critic = PRMCritic(str(out), device="cpu")
    assert critic.format.style == "value_head"
    states = [State(Problem(r["problem_id"], "find x"), r["prompt"], tuple(r["completions"])) for r in held]
    values = asyncio.run(critic.score(states))
    assert np.all((values >= 0) & (values <= 1))
    # training and scoring encode a row identically (the prompt convention)
    fmt = PRMFormat("value_head")
    for row, shaped, state in zip(held, harvest_shaped(held), states):
        for form in (row, shaped):  # messages in `prompt`, or harvest's `prompt_messages`
            enc = encode_example(critic.lm.tokenizer, prm_example(form, 0), fmt)
            assert (enc["input_ids"], enc["positions"]) == critic.encode(state)
    # the critic's per-step values track the labels
    per_step = asyncio.run(critic.step_values(states))
    scores = np.concatenate([np.asarray(v) for v in per_step])
    labels = np.concatenate([r["labels"] for r in held])
    assert roc_auc(scores, labels >= 0.5) >= 0.9


def test_a_prm_trained_without_worked_examples_scores_a_few_shot_state_without_them(tiny_model_dir, tmp_path):
    rows = prm_rows(8, seed=3)
    zero = train_prm(tiny_model_dir, rows, tmp_path / "zero", max_steps=1, batch_size=4, eval_fraction=0.25)
    example = [{"role": "user", "content": "Problem: find y."}, {"role": "assistant", "content": "Step 1: good"}]
    shots = [{**r, "prompt": [r["prompt"][0], *example, r["prompt"][1]]} for r in rows]
    searched = train_prm(tiny_model_dir, shots, tmp_path / "shots", max_steps=1, batch_size=4, eval_fraction=0.25)
    assert json.loads((tmp_path / "zero" / "treesearch_prm.json").read_text())["prompts"] == "zero_shot"
    assert json.loads((tmp_path / "shots" / "treesearch_prm.json").read_text())["prompts"] == "searched"
    few_shot = State(Problem("p", "find x"), shots[0]["prompt"], ("Step 1: good\n",))
    bare = State(Problem("p", "find x"), rows[0]["prompt"], ("Step 1: good\n",))
    critic = PRMCritic(str(tmp_path / "zero"), device="cpu")
    assert critic.format.prompts == "zero_shot" and critic.encode(few_shot) == critic.encode(bare)
    kept = PRMCritic(str(tmp_path / "shots"), device="cpu")
    assert kept.encode(few_shot) != kept.encode(bare)  # trained on worked examples: scored with them
    with pytest.raises(ValueError, match="unknown PRM prompts"):
        PRMFormat("value_head", prompts="few")


def test_prm_mse_with_held_out_fraction_and_continuing_from_a_prm_folder(tiny_model_dir, tmp_path):
    rows = prm_rows(20, seed=2)
    first = train_prm(tiny_model_dir, rows, tmp_path / "a", loss="mse", max_steps=2, batch_size=4, eval_fraction=0.25, lr=1e-3)
    assert first["steps"] == 2 and first["num_eval_rows"] == 5 and first["num_train_rows"] == 15
    assert 0 <= first["eval_loss"] <= 1
    second = train_prm(tmp_path / "a", rows, tmp_path / "b", loss="mse", max_steps=1, batch_size=4, eval_fraction=0.25)
    assert second["eval_loss_before"] == pytest.approx(first["eval_loss"], abs=1e-5)  # the head came along


def test_prm_labels_stay_floats_into_the_loss(smollm2_tokenizer):
    row = {"prompt": "Q: 1+1?\n", "completions": ["1+1 = 2.\n", "The answer is 2.\n"], "labels": [0.7, 0.25]}
    example = prm_example(row, 0)
    assert example["labels"] == [0.7, 0.25]
    encoded = encode_example(smollm2_tokenizer, example, PRMFormat("value_head"))
    batch = PRMCollator(0)([encoded])
    assert batch["targets"].dtype == torch.float32
    assert batch["targets"][0].tolist() == pytest.approx([0.7, 0.25])

    class Constant(torch.nn.Module):  # value logit 1.0 everywhere
        def forward(self, input_ids, attention_mask=None):
            return torch.ones(input_ids.shape, dtype=torch.float32)

    compute_loss = _trainer_class().compute_loss
    s = 1 / (1 + math.exp(-1.0))
    bce = compute_loss(SimpleNamespace(prm_loss_type="bce", rank_weight=0.0), Constant(), batch).item()
    want = -np.mean([t * math.log(s) + (1 - t) * math.log(1 - s) for t in (0.7, 0.25)])
    assert bce == pytest.approx(want, rel=1e-5)  # an int cast (0/0) would give -log(1 - s)
    mse = compute_loss(SimpleNamespace(prm_loss_type="mse", rank_weight=0.0), Constant(), batch).item()
    assert mse == pytest.approx(np.mean([(s - 0.7) ** 2, (s - 0.25) ** 2]), rel=1e-5)


def test_prm_plain_string_prompt_is_used_verbatim(smollm2_tokenizer):
    example = prm_example({"prompt": "Q: 2+2?\nA:", "completions": [" 4\n"], "labels": [1]}, 0)
    encoded = encode_example(smollm2_tokenizer, example, PRMFormat("value_head"))
    assert smollm2_tokenizer.decode(encoded["input_ids"]) == "Q: 2+2?\nA: 4\n"  # no chat template, no user turn
    assert encoded["positions"] == [len(encoded["input_ids"]) - 1] and encoded["targets"] == [1.0]


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda r: r.pop("labels"), r"PRM data row 1 \(problem_id 's3-1'\): missing field 'labels'"),
        (lambda r: r.pop("completions"), r"row 1 .*missing field 'completions'"),
        (lambda r: r["labels"].__setitem__(0, 1.5), r"row 1 .*field 'labels' value 0 = 1.5 is outside \[0, 1\]"),
        (lambda r: r["labels"].__setitem__(0, float("nan")), r"row 1 .*field 'labels' value 0 = nan is outside"),
        (lambda r: r["labels"].append(0.5), r"row 1 .*field 'labels' has \d+ values but 'completions' has \d+ steps"),
        (lambda r: r["completions"].__setitem__(0, ""), r"row 1 .*field 'completions' step 0 must be a non-empty string"),
        (lambda r: r.__setitem__("prompt", [{"role": "user"}]), r"row 1 .*field 'prompt' message 0 has no text"),
        (lambda r: r.__setitem__("prompt_messages", []), r"row 1 .*field 'prompt_messages' must be a non-empty list"),
    ],
)
def test_prm_bad_rows_name_the_row_and_field(tmp_path, change, pattern):
    rows = prm_rows(3, seed=3)
    change(rows[1])
    with pytest.raises(ValueError, match=pattern):
        train_prm("unused-model-name", rows, tmp_path / "x")  # rejected before any model loads


def test_prm_missing_column_in_a_parquet_file(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "labels"} for r in prm_rows(2, seed=4)]
    path = write_parquet(rows, tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"PRM data row 0 \(problem_id 's4-0'\): missing field 'labels'"):
        train_prm("unused-model-name", path, tmp_path / "x")


def test_roc_auc_and_eval_split():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5, 0.9], [False, True, True]) == pytest.approx(0.75)  # a tie counts one half
    assert roc_auc([0.2, 0.3, 0.4], [True, True, False]) == pytest.approx(0.0)
    assert math.isnan(roc_auc([0.2, 0.3], [True, True]))
    examples = [{"problem_id": f"p{i // 3}", "i": i} for i in range(30)]
    train, held = split_eval(examples, 0.2, seed=0)
    assert len(train) + len(held) == 30 and 6 <= len(held) <= 8
    assert not {e["problem_id"] for e in train} & {e["problem_id"] for e in held}
    assert split_eval(examples, 0.2, seed=0) == (train, held)
    assert split_eval(examples[:1], 0.5, seed=0) == (examples[:1], [])


def test_within_problem_auc_ignores_telling_easy_problems_from_hard_ones():
    # problem a is easy (all scores high), b hard; within each the ranking is reversed
    scores = [0.9, 0.8, 0.2, 0.1]
    right = [False, True, False, True]
    groups = ["a", "a", "b", "b"]
    assert within_problem_auc(scores, right, groups) == pytest.approx(0.0)
    assert within_problem_auc(scores, [True, False, True, False], groups) == pytest.approx(1.0)
    assert math.isnan(within_problem_auc([0.5, 0.6], [True, True], ["a", "a"]))  # no group with both


def test_pair_loss_ranks_steps_of_one_problem_only():
    logits = torch.zeros(4)
    targets = torch.tensor([0.9, 0.1, 0.9, 0.1])
    same = torch.tensor([0, 0, 0, 0])
    # pairs with a target gap: (0,1), (0,3), (2,1), (2,3); logit gaps 0 give log 2 each
    assert pair_loss(logits, targets, same).item() == pytest.approx(math.log(2))
    apart = torch.tensor([0, 1, 2, 3])
    assert pair_loss(logits, targets, apart).item() == 0.0  # no two steps of one problem
    ranked = torch.tensor([3.0, -3.0, 3.0, -3.0])
    assert pair_loss(ranked, targets, same).item() < 0.01
    assert pair_loss(-ranked, targets, same).item() > 5.0
    assert pair_loss(logits, torch.tensor([0.5, 0.45, 0.5, 0.45]), same).item() == 0.0  # within the margin


def test_problem_groups_pack_rows_of_one_problem_and_keep_every_row():
    encoded = [{"problem_id": f"p{i % 3}", "k": i} for i in range(10)] + [{"problem_id": None, "k": 10}]
    groups = problem_groups(encoded, size=2, seed=0)
    assert sorted(r["k"] for g in groups for r in g["rows"]) == list(range(11))
    assert all(len(g["rows"]) <= 2 and len({r["problem_id"] for r in g["rows"]}) == 1 for g in groups)
    assert problem_groups(encoded, size=2, seed=0) == groups
    batch = GroupCollator(PRMCollator(0))([
        {"rows": [{"input_ids": [1, 2], "positions": [1], "targets": [1.0]}] * 2},
        {"rows": [{"input_ids": [3], "positions": [0], "targets": [0.0]}]},
    ])
    assert batch["groups"].tolist() == [0, 0, 1] and batch["input_ids"].shape == (3, 2)


def test_a_fresh_value_head_starts_at_the_data_base_rate(tiny_model_dir, smollm2_tokenizer):
    lm, tokenizer = load_private_model(tiny_model_dir)
    model = ValueHeadModel(lm)
    fmt = PRMFormat("value_head")
    encoded = [encode_example(tokenizer, prm_example(r, i), fmt) for i, r in enumerate(prm_rows(24, seed=3))]
    for e in encoded:
        e["targets"] = [0.2] * len(e["targets"])
    collator = PRMCollator(tokenizer.pad_token_id or 0)
    calibrate_head(model, encoded, collator, sample=24, logit_std=0.5)
    batch = collator(encoded)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = logits.gather(1, batch["positions"])[batch["step_mask"]]
    assert float(logits.mean()) == pytest.approx(math.log(0.2 / 0.8), abs=1e-3)
    assert float(logits.std()) == pytest.approx(0.5, rel=1e-2)


def test_prm_with_a_ranking_loss_ranks_each_problem_s_steps(tiny_model_dir, tmp_path):
    def shared(rows, per):
        return [dict(r, problem_id=f"q{i // per}") for i, r in enumerate(rows)]

    train = shared(prm_rows(48, seed=0), 4)
    held = shared(prm_rows(16, seed=1), 4)
    metrics = train_prm(tiny_model_dir, train, tmp_path / "ranked", epochs=6, lr=1e-3, head_lr=3e-3,
                        batch_size=8, eval_data=held, rank_weight=1.0)
    assert metrics["rank_weight"] == 1.0
    assert metrics["eval_auc_within_problem"] >= 0.9
    assert metrics["eval_auc_within_problem"] > metrics["eval_auc_within_problem_before"]
    record = json.loads((tmp_path / "ranked" / "treesearch_train.json").read_text())
    assert record["args"]["rank_weight"] == 1.0
    with pytest.raises(ValueError, match="rank_weight"):
        train_prm(tiny_model_dir, train, tmp_path / "x", rank_weight=-1.0)


def test_max_steps_caps_but_never_extends_epochs():
    from treesearch.train.common import step_limit

    assert step_limit(None, rows=100, epochs=1, batch_size=4) == -1
    assert step_limit(30, rows=100, epochs=1, batch_size=4) == 25  # one epoch is 25 steps
    assert step_limit(10, rows=100, epochs=1, batch_size=4) == 10
    assert step_limit(30, rows=2, epochs=1, batch_size=4) == 1  # 2 rows: one step, not 30
    assert step_limit(30, rows=9, epochs=2, batch_size=4, accumulation=2) == 4


def test_training_without_the_train_extra_says_what_to_install(monkeypatch):
    import importlib.util

    from treesearch.train import train_prm, train_sft

    real = importlib.util.find_spec
    for train, package in ((train_sft, "trl"), (train_prm, "accelerate")):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, gone=package: None if name == gone
                            else real(name, *a))
        with pytest.raises(ImportError, match=rf"needs the training packages \['{package}'\]: pip install "
                                              r"'treesearch\[train\]'"):
            train("smollm2", [], "/nonexistent/out")


@pytest.mark.slow
def test_plain_trl_trains_on_harvested_sft_rows_with_the_exported_model(tmp_path):
    """The documented path for researchers: `treesearch export-model smollm2 DIR`, then TRL's
    own SFTTrainer on `sft.parquet`, with nothing from treesearch in between."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    from tests.test_harvest import RUN1_BRANCHES, sft_tree, write_run
    from treesearch.cli import main
    from treesearch.harvest import harvest

    write_run(tmp_path / "run", [sft_tree("p", RUN1_BRANCHES)])
    paths = harvest([tmp_path / "run"], tmp_path / "data")
    assert main(["export-model", "smollm2", str(tmp_path / "smollm2-hf")]) == 0
    rows = load_dataset("parquet", data_files=str(paths["sft"]), split="train").select_columns(["prompt", "completion"])
    config = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=1, report_to="none",
                       use_cpu=True, bf16=False, save_strategy="no", logging_steps=1)
    trainer = SFTTrainer(model=str(tmp_path / "smollm2-hf"), args=config, train_dataset=rows)
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0
