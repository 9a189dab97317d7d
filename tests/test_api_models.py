"""`treesearch.search` with config mappings: the models are built where `cluster` says
(this process, or Ray actor pools) and give the same results as objects passed in."""

import os
from pathlib import Path

import pytest

import treesearch
from tests.doubles import hashed_value, scripted_policy

ROOT = Path(__file__).resolve().parent.parent
POLICY = {"backend": "python", "factory": "tests.doubles:scripted_policy", "seed": 3}
CRITIC = {"name": "python", "function": "tests.doubles:hashed_value", "options": {"seed": 1}}
PROBLEMS = [{"id": str(i), "question": f"q{i}", "gold": str(i % 4)} for i in range(6)]
BUDGET = {"generated_tokens": 60}


def outcome(results):
    return [(r.problem.id, r.answer, r.correct, r.accounting.generated_tokens, r.solution) for r in results]


def with_objects():
    return treesearch.search(PROBLEMS, policy=scripted_policy(3), critic=hashed_value(1), budget=BUDGET, c_puct=2.0)


def test_config_mappings_build_in_process_the_models_objects_would_be():
    built = treesearch.search(PROBLEMS, policy=POLICY, critic=CRITIC, budget=BUDGET, c_puct=2.0)
    assert outcome(built) == outcome(with_objects())
    assert {r.answer for r in built} != {None}


def test_mappings_that_cannot_be_hosted_are_refused_with_the_reason():
    with pytest.raises(TypeError, match="policy must be a config mapping"):
        treesearch.search(PROBLEMS, policy=scripted_policy(3), cluster="ray")
    with pytest.raises(TypeError, match="critic must be a config mapping"):
        treesearch.search(PROBLEMS, policy=POLICY, critic=hashed_value(1))
    with pytest.raises(ValueError, match="pass task as a config mapping"):
        treesearch.search(PROBLEMS, policy=POLICY, critic="verifier")
    with pytest.raises(ValueError, match="cluster.kind must be one of"):
        treesearch.search(PROBLEMS, policy=POLICY, cluster="slurm")


def test_the_same_arguments_run_on_ray_actor_pools(ray_cluster):
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}}
    cluster = {"kind": "ray", "policy": {"runtime_env": env}, "critic": {"runtime_env": env}}
    on_ray = treesearch.search(PROBLEMS, policy=POLICY, critic=CRITIC, budget=BUDGET, cluster=cluster, c_puct=2.0)
    assert outcome(on_ray) == outcome(with_objects())


def test_target_sections_build_the_users_own_policy_and_critic_with_hydra_instantiate(caplog, monkeypatch):
    from treesearch import components

    monkeypatch.setattr(components, "_warned", set())  # each deprecation is logged once per process
    policy = {"_target_": "tests.doubles.scripted_policy", "seed": 3}
    critic = {"_target_": "tests.doubles.hashed_value", "seed": 1, "name": None}
    built = treesearch.search(PROBLEMS, policy=policy, critic=critic, budget=BUDGET, c_puct=2.0)
    assert outcome(built) == outcome(with_objects())
    # the older keys still work, with a deprecation message naming the new one
    with caplog.at_level("WARNING"):
        older = treesearch.search(PROBLEMS, policy=POLICY, critic=CRITIC, budget=BUDGET, c_puct=2.0)
    assert outcome(older) == outcome(built)
    assert "policy._target_" in caplog.text and "critic._target_" in caplog.text


def test_a_target_that_cannot_be_built_is_named():
    with pytest.raises(ValueError, match=r"critic\._target_='tests\.doubles\.nowhere'"):
        treesearch.search(PROBLEMS, policy=POLICY, critic={"_target_": "tests.doubles.nowhere"})
    with pytest.raises(TypeError, match=r"policy\._target_ 'tests\.doubles\.hashed_value' built .* lacks expand"):
        treesearch.search(PROBLEMS, policy={"_target_": "tests.doubles.hashed_value", "seed": 1})


def test_the_target_config_groups_compose_into_sections_that_build():
    from treesearch.components import build_critic, build_policy, has_critic
    from treesearch.config import compose

    cfg = compose("search", ["policy=target", "policy._target_=tests.doubles.scripted_policy", "+policy.seed=3",
                             "critic=target", "critic._target_=tests.doubles.hashed_value", "+critic.seed=1"])
    assert has_critic(cfg.critic)
    policy, critic = build_policy(cfg.policy), build_critic(cfg.critic)
    built = treesearch.search(PROBLEMS, policy=policy, critic=critic, budget=BUDGET, c_puct=2.0)
    assert outcome(built) == outcome(with_objects())
