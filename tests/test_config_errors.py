"""Bad configuration gets a clear error that names the problem."""

import pytest

import treesearch
from treesearch import Budget, Problem
from tests.doubles import ScriptedPolicy

POLICY = ScriptedPolicy({(): [("The answer is 1.", -0.1)]})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(generated_tokens=-5), r"Budget.generated_tokens must be positive, got -5"),
        (dict(simulations=0), r"Budget.simulations must be positive"),
        (dict(seconds="10"), r"Budget.seconds must be a number"),
        (dict(), r"Budget is unbounded"),
    ],
)
def test_bad_budgets(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Budget(**kwargs)


def test_unknown_budget_field_from_dict():
    with pytest.raises(ValueError, match=r"unknown budget field\(s\) \['tokenz'\]"):
        treesearch.search(["q"], policy=POLICY, algorithm="greedy", budget={"tokenz": 5})


@pytest.mark.parametrize(
    "algorithm, options, message",
    [
        ("mcts", dict(expansions=0), r"MCTSConfig.expansions must be >= 1, got 0"),
        ("mcts", dict(root_expansions=0), r"MCTSConfig.root_expansions must be >= 1"),
        ("beam", dict(beam_width=0), r"BeamConfig.beam_width must be >= 1"),
        ("best_of_n", dict(samples=0), r"BestOfNConfig.samples must be >= 1"),
        ("mcts", dict(selection="ucb9"), r"MCTSConfig.selection must be one of \('puct', 'uct'\)"),
        ("mcts", dict(backup="median"), r"MCTSConfig.backup must be one of"),
        ("mcts", dict(rollforward_weight=2.0), r"rollforward_weight must be in \[0, 1\]"),
        ("greedy", dict(answer_selection="vibes"), r"answer_selection must be one of"),
        ("mcts", dict(c_pucts=1.0), r"unknown option\(s\) \['c_pucts'\] for algorithm 'mcts'"),
        ("mcts", dict(prior="softmax"), r"prior must be one of"),
        ("alphazero", {}, r"unknown algorithm 'alphazero'; choose from \['beam', 'best_of_n', 'greedy', 'mcts', 'self_consistency'\]"),
    ],
)
def test_bad_algorithm_configs(algorithm, options, message):
    with pytest.raises(ValueError, match=message):
        treesearch.search(["q"], policy=POLICY, critic=lambda s: 0.5, algorithm=algorithm, budget=Budget(simulations=2), **options)


def test_critic_required():
    with pytest.raises(ValueError, match="algorithm 'mcts' needs a critic"):
        treesearch.search(["q"], policy=POLICY, algorithm="mcts", budget=Budget(simulations=2))


def test_bad_problems():
    with pytest.raises(ValueError, match="question is empty"):
        Problem("x", "  ")
    with pytest.raises(ValueError, match=r"problem 0: missing field 'question'"):
        treesearch.search([{"q": "hi"}], policy=POLICY, algorithm="greedy")


def test_not_a_policy():
    with pytest.raises(TypeError, match=r"lacks expand\(\)/complete\(\)"):
        treesearch.search(["q"], policy=object(), algorithm="greedy")


def test_sync_api_inside_event_loop_points_to_async_twin():
    import asyncio

    async def main():
        with pytest.raises(RuntimeError, match="asearch"):
            treesearch.search(["q"], policy=POLICY, algorithm="greedy")
        (result,) = await treesearch.asearch(["q"], policy=POLICY, algorithm="greedy")
        return result

    assert asyncio.run(main()).answer == "1"


def test_label_free_self_training_refuses_a_critic_that_reads_gold_answers(tmp_path):
    from treesearch.config import compose
    from treesearch.selftrain import SelfTraining, selftrain_digest

    base = [f"selftrain.dev.path={tmp_path / 'dev.jsonl'}", f"selftrain.output_dir={tmp_path / 'st'}"]
    with pytest.raises(ValueError, match=r"labels=vote is for data without gold answers, but critic=verifier"):
        SelfTraining(compose("selftrain", base + ["selftrain.harvest.labels=vote"]))
    SelfTraining(compose("selftrain", base + ["selftrain.harvest.labels=vote", "critic=self_eval"]))  # accepted
    # labels at its default leaves the digest as it was before the key existed (older folders resume)
    cfg = compose("selftrain", base)
    from omegaconf import OmegaConf

    older = OmegaConf.create(OmegaConf.to_container(cfg))  # untyped, as configs were before the schemas
    del older.selftrain.harvest["labels"]
    assert selftrain_digest(cfg) == selftrain_digest(older)


def test_self_training_digests_ignore_monitoring_and_still_match_folders_from_before(tmp_path):
    import hashlib
    import json

    from treesearch.components import plain
    from treesearch.config import compose
    from treesearch.jobs import job_digest
    from treesearch.selftrain import selftrain_digest

    base = [f"selftrain.dev.path={tmp_path / 'dev.jsonl'}"]
    cfg = compose("selftrain", base)
    # B-STaR settings are monitoring unless they steer the next round's temperature
    assert selftrain_digest(compose("selftrain", base + ["selftrain.bstar.k=4"])) == selftrain_digest(cfg)
    steering = base + ["selftrain.bstar.choose_temperature=true"]
    assert selftrain_digest(compose("selftrain", steering + ["selftrain.bstar.k=4"])) != selftrain_digest(
        compose("selftrain", steering))
    # the digest a folder got before relative thresholds and label-free rounds existed
    section = {k: v for k, v in plain(cfg.selftrain).items() if k != "rounds"}
    section["harvest"].pop("labels")
    section["harvest"].pop("reject_lucky")
    section["harvest"].pop("prompts")
    section.pop("fresh_problems")
    section["eval"].pop("search_limit")
    section.pop("extra_train")
    section.pop("extra_dev")
    section["policy_training"].pop("report_to")
    section["prm_training"].pop("report_to")
    section["prm_training"].pop("warm_start")
    section["prm_training"].pop("rank_weight")
    section["bstar"].pop("quantiles")
    section["bstar"].pop("sample_counts")
    section["bstar"].pop("count_tolerance")
    section["bstar"]["threshold"] = 0.5
    before = hashlib.sha256((job_digest(cfg) + json.dumps(section, sort_keys=True, default=str)).encode()).hexdigest()
    assert selftrain_digest(cfg, legacy=True) == before


def test_a_job_wants_a_critic_with_its_task_or_none():
    from treesearch.hosting import wanted_models

    cfg = {"policy": {"backend": "hf", "model": "m"}, "critic": {"name": "verifier"}, "task": {"name": "gsm8k"}}
    assert wanted_models(cfg) == ({"backend": "hf", "model": "m"}, ({"name": "verifier"}, {"name": "gsm8k"}))
    assert wanted_models({**cfg, "critic": {"name": None}})[1] is None
    assert wanted_models({k: v for k, v in cfg.items() if k != "critic"})[1] is None
    target = {"_target_": "pkg.make"}
    assert wanted_models({**cfg, "critic": target})[1] == (target, {"name": "gsm8k"})
