"""A whole self-training round on a tiny model, on a real local Ray cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


pytestmark = pytest.mark.usefixtures("ray_cluster")

QUESTIONS = [
    ("Ann has 2 apples and gets 3 more. How many apples?", 5),
    ("A box has 9 pens. 4 are taken. How many are left?", 5),
    ("Tom reads 1 page, then 4 more. How many pages?", 5),
    ("There are 3 cats and 3 dogs. How many animals?", 6),
]


def compose(overrides):
    from treesearch.config import compose as compose_config

    return compose_config("selftrain", overrides)


@pytest.fixture(scope="module")
def answering_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny random model, briefly trained to answer "The answer is 5." to these
    prompts, so that searches find correct (and, for the last question, wrong) traces."""
    from treesearch.models import load_causal_lm
    from treesearch.prompting import render_prompt
    from treesearch.tasks import JSONLTask
    from treesearch.types import Problem

    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu")
    model = type(model).from_pretrained(tiny_model_dir)  # a private copy to train
    task = JSONLTask(question_field="input", answer_field="target")
    texts = []
    for q, _ in QUESTIONS:
        prompt = render_prompt(tok, task.prompt(Problem("x", q)))
        texts.append((tok.encode(prompt, add_special_tokens=False), tok.encode("The answer is 5.", add_special_tokens=False) + [tok.eos_token_id]))
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        for prompt, answer in texts:
            ids = torch.tensor([prompt + answer])
            labels = torch.tensor([[-100] * len(prompt) + answer])
            loss = model(input_ids=ids, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("answering-model")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"input": q, "target": t}) + "\n" for q, t in rows))
    return path


def test_a_round_writes_every_stage_and_its_models_load(answering_model_dir, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", QUESTIONS)
    dev = write_jsonl(tmp_path / "dev.jsonl", QUESTIONS[1:])
    out = tmp_path / "st"
    overrides = [
        f"task.path={train}",
        "task.limit=null",
        f"selftrain.dev.path={dev}",
        "selftrain.dev.limit=null",
        f"policy.model={answering_model_dir}",
        "policy.device=cpu",
        "selftrain.rounds=1",
        f"selftrain.output_dir={out}",
        "selftrain.policy_training.max_length=256",
        "selftrain.policy_training.batch_size=2",
        "selftrain.policy_training.lr=1e-4",
        "selftrain.prm_training.batch_size=2",
        "selftrain.prm_training.epochs=1",
        "selftrain.eval_critic.device=cpu",
        "selftrain.bstar.k=4",
        "selftrain.bstar.limit=2",
        "search.budget.generated_tokens=120",
        "search.options.max_step_tokens=16",
        "search.options.max_solution_tokens=24",
        "search.options.max_depth=3",
        "job.progress=false",
        "job.trees_in_flight=4",
        f"selftrain.extra_train=[{{path: {dev}, limit: 2, label: more}}]",
        f"selftrain.extra_dev=[{{path: {train}, limit: 2, label: also}}]",
        "selftrain.eval.search_limit=2",
        "selftrain.bstar.sample_counts=[2,4]",
    ]
    from treesearch.selftrain import SelfTraining

    summary = SelfTraining(compose(overrides)).run()
    (record,) = summary["rounds"]
    folder = out / "round-0"
    for stage in ("search/results.parquet", "data/harvest.json", "data/sft.parquet", "data/prm.parquet",
                  "policy/config.json", "prm/value_head.safetensors", "eval_greedy/metrics.json",
                  "eval_search/metrics.json", "round.json"):
        assert (folder / stage).exists(), stage
    assert record["data_counts"]["sft"] > 0 and record["data_counts"]["prm"] > 0
    assert record["policy_out"] == str(folder / "policy") and record["prm_out"] == str(folder / "prm")
    assert record["dev_greedy"]["graded"] == 3 and record["dev_search"]["graded"] == 2  # eval.search_limit
    assert summary["baseline"]["dev_greedy"]["graded"] == 3
    # the extra train split is searched and harvested with the main one
    assert (folder / "search-more" / "results.parquet").exists() and record["search_extra"]["more"]["graded"] == 2
    assert [run["name"] for run in json.loads((folder / "data" / "harvest.json").read_text())["runs"]] == [
        "search", "search-more"]
    # every dev split is evaluated, with standard errors and paired differences against the baseline
    also = record["extra_dev"]["also"]
    assert also["dev_greedy"]["graded"] == 2 and also["dev_search"]["graded"] == 2
    assert summary["baseline"]["extra_dev"]["also"]["dev_greedy"]["graded"] == 2
    assert also["dev_greedy"]["vs_baseline"]["problems"] == 2 and record["dev_greedy"]["vs_baseline"]["problems"] == 3
    assert 0 <= record["dev_greedy"]["se"] <= 0.5
    assert {"search", "harvest", "evaluation", "bstar"} <= set(record["seconds"])
    assert (out / "accuracy_by_round.png").is_file()
    bstar = record["bstar"]["by_temperature"]
    assert len(bstar) == 1 and 0 <= next(iter(bstar.values()))["balance_score"] <= 1
    chosen = record["bstar"]["chosen_sample_count"]  # B-STaR's sample count scales the next round's budget
    assert set(record["bstar"]["by_sample_count"]) == {"2", "4"} and record["next_budget_scale"] == chosen / 4
    lineage = json.loads((folder / "round.json").read_text())
    assert lineage["policy_in"] == str(answering_model_dir)

    # the checkpoints load back into the backends
    import asyncio

    from critics.prm import PRMCritic
    from treesearch.policy.hf import HFPolicy
    from treesearch.types import Problem, SamplingParams, State

    state = State(Problem("d", QUESTIONS[0][0]), [{"role": "user", "content": QUESTIONS[0][0]}], ("Two plus three.\n",))
    steps = asyncio.run(HFPolicy(record["policy_out"], device="cpu").expand([state], 2, SamplingParams(max_new_tokens=8, seed=0)))
    assert len(steps[0]) == 2
    values = asyncio.run(PRMCritic(record["prm_out"], device="cpu").score([state]))
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()

    # a rerun resumes: the finished round is not redone
    stamp = (folder / "round.json").stat().st_mtime_ns
    again = SelfTraining(compose(overrides)).run()
    assert (folder / "round.json").stat().st_mtime_ns == stamp
    assert again["rounds"][0]["policy_out"] == record["policy_out"]
