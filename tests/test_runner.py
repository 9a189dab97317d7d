"""The runner batches requests from many trees; the batcher groups, splits and isolates."""

import asyncio
import time

import pytest

from treesearch import Budget, Problem, Runner
from treesearch.batching import Batcher
from tests.doubles import ContinuousPolicy, ScriptedPolicy, hashed_value, random_script


def test_many_trees_in_flight_share_policy_batches():
    # 64 trees, each with 2 simulations in flight, against a policy whose every call
    # takes 20 ms (an engine's latency). While one call runs, the next requests of all
    # other trees queue up, so after the first call each batch holds about as many
    # requests as there are trees waiting. A per-node loop would give batches of 1.
    # We assert a mean of at least 16 (a quarter of the trees): any regression to
    # per-request calls, or a batcher that flushes early, falls far below that.
    policy = ScriptedPolicy(random_script(3), mode="sample", delay=0.02)
    runner = Runner(policy, hashed_value(1), max_batch_size=128, trees_in_flight=64)
    problems = [Problem(f"p{i}", f"question {i}") for i in range(64)]
    results = asyncio.run(
        runner.run(problems, "mcts", Budget(simulations=6), parallel_simulations=2, seed=0)
    )
    assert all(r.error is None for r in results)
    stats = runner.stats
    sizes = [size for kind, size in policy.calls]
    assert stats.policy.sizes == sizes
    assert stats.policy.requests == sum(r.accounting.policy_calls for r in results)
    assert stats.policy.mean_batch_size >= 16, stats.policy.histogram()
    assert max(sizes) > 32
    assert stats.critic.mean_batch_size >= 16
    # time split: model calls dominate (every call sleeps), the rest is engine time
    assert stats.model_seconds >= 0.02 * stats.policy.calls * 0.9
    assert stats.engine_seconds == pytest.approx(stats.wall_seconds - stats.model_seconds)


def test_one_tree_at_a_time_gives_small_batches():
    # the control for the test above: the same search with one tree in flight
    policy = ScriptedPolicy(random_script(3), mode="sample")
    runner = Runner(policy, hashed_value(1), trees_in_flight=1)
    problems = [Problem(f"p{i}", f"question {i}") for i in range(8)]
    asyncio.run(runner.run(problems, "mcts", Budget(simulations=6), parallel_simulations=1))
    assert runner.stats.policy.mean_batch_size == 1


def _finish_times(calls_in_flight: int) -> tuple[dict, ContinuousPolicy]:
    """Seconds from the start until each problem's result is handed on: one slow problem
    (every call holding it takes 0.25 s) and three fast ones (5 ms), 4 simulations each."""
    policy = ContinuousPolicy(random_script(2), calls_in_flight=calls_in_flight, mode="sample")
    runner = Runner(policy, hashed_value(1), trees_in_flight=4)
    problems = [Problem("slow", "q")] + [Problem(f"fast{i}", f"q{i}") for i in range(3)]
    started, done = time.perf_counter(), {}
    results = asyncio.run(runner.run(problems, "mcts", Budget(simulations=4), seed=0,
                                     on_result=lambda r: done.setdefault(r.problem.id, time.perf_counter() - started)))
    assert all(r.error is None for r in results)
    return done, policy


def test_an_engine_that_batches_continuously_gets_each_request_as_it_comes():
    # every request is a call of its own, so the fast trees go on while the slow tree's
    # request runs: they are done before its first call returns
    done, policy = _finish_times(calls_in_flight=8)
    assert {size for _, size in policy.calls} == {1}
    assert max(done[f"fast{i}"] for i in range(3)) < 0.25 < done["slow"]
    # the control: one gathered call at a time, so the fast trees' requests wait in the
    # slow tree's batches, one slow call per step
    done, policy = _finish_times(calls_in_flight=1)
    assert max(size for _, size in policy.calls) > 1
    assert min(done[f"fast{i}"] for i in range(3)) > 0.5


def test_a_backends_calls_in_flight_must_be_a_positive_count():
    from treesearch.policy.base import calls_in_flight

    assert calls_in_flight(ScriptedPolicy(random_script(1))) == 1  # not declared: one call at a time
    assert calls_in_flight(ContinuousPolicy(random_script(1), calls_in_flight=5)) == 5
    with pytest.raises(ValueError, match="calls_in_flight must be an int >= 1, got 0"):
        calls_in_flight(ContinuousPolicy(random_script(1), calls_in_flight=0))
    with pytest.raises(ValueError, match="policy_calls_in_flight must be >= 1"):
        Runner(ScriptedPolicy(random_script(1)), policy_calls_in_flight=0)


async def _echo_batches(calls):
    async def fn(key, items):
        calls.append((key, list(items)))
        await asyncio.sleep(0.01)
        return [f"{key}:{item}" for item in items]

    batcher = Batcher(fn, max_batch_size=3, max_wait_s=0.005)
    out = await asyncio.gather(*(batcher.submit("a" if i % 2 else "b", i) for i in range(8)))
    await batcher.close()
    return out, batcher


def test_batcher_groups_by_key_and_respects_max_size():
    calls = []
    out, batcher = asyncio.run(_echo_batches(calls))
    assert out == [f"{'a' if i % 2 else 'b'}:{i}" for i in range(8)]
    assert all(len(items) <= 3 for _, items in calls)
    assert all(all((i % 2 == 1) == (key == "a") for i in items) for key, items in calls)
    assert sorted(i for _, items in calls for i in items) == list(range(8))
    assert batcher.stats.requests == 8


def test_a_failing_request_does_not_fail_its_batch_mates():
    async def fn(key, items):
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]

    async def main():
        batcher = Batcher(fn, max_batch_size=8, max_wait_s=0.01)
        results = await asyncio.gather(
            *(batcher.submit("k", x) for x in ["a", "bad", "c"]), return_exceptions=True
        )
        await batcher.close()
        return results

    a, bad, c = asyncio.run(main())
    assert (a, c) == ("A", "C")
    assert isinstance(bad, ValueError) and "bad item" in str(bad)


def test_batch_function_returning_too_few_results_is_an_error():
    async def fn(key, items):
        return items[:1]

    async def main():
        batcher = Batcher(fn, max_batch_size=8, max_wait_s=0.01)
        out = await asyncio.gather(*(batcher.submit("k", x) for x in [1, 2]), return_exceptions=True)
        await batcher.close()
        return out

    out = asyncio.run(main())
    # the batch of two fails the count check; retried one by one, each succeeds
    assert out == [1, 2]


def test_closing_a_batcher_fails_requests_still_queued():
    async def fn(key, items):
        await asyncio.sleep(0.05)
        return items

    async def main():
        batcher = Batcher(fn, max_batch_size=1, max_wait_s=0)
        first = asyncio.ensure_future(batcher.submit("k", 1))
        second = asyncio.ensure_future(batcher.submit("k", 2))  # queued behind the first
        await asyncio.sleep(0.01)
        await batcher.close()
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = asyncio.run(main())
    assert first == 1
    assert isinstance(second, RuntimeError) and "closed" in str(second)


def test_a_replicated_model_gets_whole_batches_per_replica():
    """With a pool of replicas, each engine call holds states of one replica only (not a
    batch split into one small call per replica), and the stats count every call."""
    from tests.doubles import ScriptedPolicy, random_script

    class TwoReplicas(ScriptedPolicy):
        replicas = 2

        def replica_of(self, state):
            return int(state.problem.id) % 2

        async def expand(self, states, n, params):
            self.replica_sets = getattr(self, "replica_sets", [])
            self.replica_sets.append({self.replica_of(s) for s in states})
            return await super().expand(states, n, params)

    policy = TwoReplicas(random_script(1), delay=0.01)
    problems = [Problem(str(i), f"q{i}") for i in range(12)]
    runner = Runner(policy, critic=lambda s: 0.5, trees_in_flight=12, policy_concurrency=2)
    results = asyncio.run(runner.run(problems, "mcts", Budget(simulations=4), expansions=2, root_expansions=2))
    assert all(r.error is None for r in results)
    assert policy.replica_sets and all(len(s) == 1 for s in policy.replica_sets)
    assert {r for s in policy.replica_sets for r in s} == {0, 1}
    assert runner.stats.policy.calls == len(policy.replica_sets)


def test_a_run_that_does_not_keep_results_holds_no_tree_once_each_is_handed_on():
    """A job writes each result as it finishes; the driver must not hold every tree until
    the end (memory would grow with the number of problems)."""
    import gc
    import weakref

    trees, written = [], []

    def on_result(result):
        written.append(result.problem.id)
        trees.append(weakref.ref(result.tree))

    runner = Runner(ScriptedPolicy(random_script(3), mode="sample"), hashed_value(1), trees_in_flight=4)
    problems = [Problem(f"p{i}", f"question {i}") for i in range(24)]
    out = asyncio.run(runner.run(problems, "mcts", Budget(simulations=6), on_result=on_result, keep_results=False))
    gc.collect()
    assert out == [] and sorted(written) == sorted(p.id for p in problems)
    assert all(ref() is None for ref in trees), "trees are still referenced after the run"
    kept = asyncio.run(runner.run(problems[:3], "mcts", Budget(simulations=6)))
    assert [r.problem.id for r in kept] == ["p0", "p1", "p2"]
