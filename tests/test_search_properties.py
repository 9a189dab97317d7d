"""Invariants that must hold after any search, on random scripted trees."""

import asyncio

import numpy as np
from hypothesis import given, settings, strategies as st

from treesearch import Budget, Problem, Runner
from tests.doubles import ScriptedPolicy, hashed_value, random_script


def check_tree_invariants(tree, backup_sum_exact=True):
    n = len(tree)
    visits = tree.column("visits")
    value_sum = tree.column("value_sum")
    assert (tree.column("virtual_loss") == 0).all(), "virtual loss left after the search"
    visited = visits > 0
    q = value_sum[visited] / visits[visited]
    assert ((q >= -1e-9) & (q <= 1 + 1e-9)).all(), "mean value outside [0, 1]"
    vmax = tree.column("value_max")[visited]
    assert ((vmax >= 0) & (vmax <= 1)).all()
    critic = tree.column("critic_value")
    scored = ~np.isnan(critic)
    assert ((critic[scored] >= 0) & (critic[scored] <= 1)).all()
    for node in range(n):
        kids = tree.children(node)
        if kids.size == 0:
            continue
        # each simulation through a node continues into one child, except the one that
        # ended at the node when it was created, those that ended there because a
        # widening of its parent drew it again (at most one per duplicate merged into it)
        # and its revisits while it had no open child (MCTSStar._revisit; then its first
        # child, which is never reopened, was closed)
        extra = visits[node] - visits[kids].sum()
        revisited = bool(tree.closed[kids[0]])
        assert 0 <= extra and (revisited or extra <= 1 + tree.duplicates[node]), (node, extra)
        extra_value = value_sum[node] - value_sum[kids].sum()
        assert -1e-9 <= extra_value <= extra + 1e-9
        if extra == 0:
            assert abs(extra_value) < 1e-9
        assert abs(tree.prior[kids].sum() - 1) < 1e-5, "sibling priors must sum to 1"
        assert (tree.depth[kids] == tree.depth[node] + 1).all()
        if tree.closed[kids].all() and not tree.can_widen[node]:
            assert tree.closed[node], "a node whose children are all closed must be closed"
        assert tree.samples[node] >= (1 + tree.duplicates[kids]).sum(), "every child and duplicate was sampled"
    if not tree.expanded[0]:
        assert visits[0] == 0
    elif not tree.closed[tree.children(0)[0]]:  # (else the root may have been revisited)
        assert visits[0] == visits[tree.children(0)].sum()


def search(algorithm, script_seed, budget, critic_seed=0, padding=0, **options):
    policy = ScriptedPolicy(random_script(script_seed, padding=padding), mode="sample")
    runner = Runner(policy, hashed_value(critic_seed))
    problems = [Problem(f"p{i}", f"question {i}", gold=str(i % 4)) for i in range(3)]
    return asyncio.run(runner.run(problems, algorithm, budget, **options))


@settings(max_examples=40, deadline=None)
@given(
    script_seed=st.integers(0, 10_000),
    simulations=st.integers(1, 40),
    parallel=st.integers(1, 6),
    c_puct=st.floats(0, 4),
    selection=st.sampled_from(["puct", "uct"]),
    backup=st.sampled_from(["mean", "max"]),
    rollforward=st.integers(0, 2),
    expansions=st.integers(1, 4),
)
def test_mcts_invariants(script_seed, simulations, parallel, c_puct, selection, backup, rollforward, expansions):
    results = search(
        "mcts",
        script_seed,
        Budget(simulations=simulations),
        parallel_simulations=parallel,
        c_puct=c_puct,
        selection=selection,
        backup=backup,
        rollforward_steps=rollforward,
        expansions=expansions,
        root_expansions=expansions + 1,
        seed=script_seed,
    )
    for result in results:
        assert result.error is None, result.error
        assert result.accounting.simulations <= simulations
        check_tree_invariants(result.tree)
        # every backed-up simulation went through the root
        assert result.tree.visits[0] <= result.accounting.simulations
        assert 0 <= result.value <= 1


ALGORITHMS = {
    "mcts": dict(parallel_simulations=4, expansions=3, root_expansions=4),
    "beam": dict(beam_width=3, expansions=3),
    "best_of_n": dict(samples=64, parallel=4),
    "self_consistency": dict(samples=64, parallel=4),
    "greedy": {},
}


@settings(max_examples=60, deadline=None)
@given(
    algorithm=st.sampled_from(sorted(ALGORITHMS)),
    script_seed=st.integers(0, 10_000),
    tokens=st.integers(1, 400),
    padding=st.sampled_from([0, 12]),
)
def test_no_algorithm_overspends_its_token_budget_by_one_request(algorithm, script_seed, tokens, padding):
    options = dict(ALGORITHMS[algorithm], max_step_tokens=16, max_solution_tokens=64, seed=script_seed)
    results = search(algorithm, script_seed, Budget(generated_tokens=tokens), padding=padding, **options)
    # Every algorithm sizes its requests to the uncommitted budget, so it overruns by
    # less than one request: one step for the step-wise searches (however many
    # simulations or beams are in flight), one solution for the samplers.
    one_request = 16 if algorithm in ("mcts", "beam") else 64
    for result in results:
        assert result.error is None, result.error
        assert result.accounting.generated_tokens < tokens + one_request
        check_tree_invariants(result.tree)


@settings(max_examples=15, deadline=None)
@given(algorithm=st.sampled_from(sorted(ALGORITHMS)), calls=st.integers(1, 12), script_seed=st.integers(0, 1000))
def test_policy_call_budget_is_respected_within_one_batch(algorithm, calls, script_seed):
    options = dict(ALGORITHMS[algorithm], seed=script_seed)
    results = search(algorithm, script_seed, Budget(policy_calls=calls), **options)
    in_flight = {"mcts": 4 + 2, "beam": 3, "best_of_n": 4, "self_consistency": 4, "greedy": 1}[algorithm]
    for result in results:
        assert result.accounting.policy_calls < calls + in_flight
