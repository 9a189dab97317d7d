"""The actor pool's breaker, with stand-in actors (no Ray cluster): a poison request fails
alone wherever it sits in a batch; a model that cannot serve is taken out after a bounded
number of attempts, and later calls fail at once."""

import asyncio

import pytest
import ray.exceptions

from treesearch import cluster
from treesearch.batching import Batcher


class _Method:
    def __init__(self, actor, name):
        self.actor, self.name = actor, name

    def remote(self, items):
        async def go():
            self.actor.calls += 1
            if self.actor.dead or any("poison" in i for i in items):
                raise ray.exceptions.RayActorError()
            return [f"ok:{i}" for i in items]

        return go()


class _Actor:
    def __init__(self, dead):
        self.dead, self.calls = dead, 0

    def __getattr__(self, name):
        return _Method(self, name)


def pool_of(monkeypatch, dead=False):
    monkeypatch.setattr(ray, "kill", lambda *a, **k: None)
    real_sleep = asyncio.sleep
    monkeypatch.setattr(cluster.asyncio, "sleep", lambda s: real_sleep(0))

    class Started:
        @staticmethod
        def options(**_):
            class Remote:
                @staticmethod
                def remote(*_):
                    return _Actor(dead)

            return Remote

    return cluster.ActorPool(Started, (), {}, name="policy")


def run(pool, items):
    async def batch(key, part):
        return await pool.call(0, "expand", part, problems=frozenset(part))

    async def main():
        batcher = Batcher(batch, max_batch_size=32, max_wait_s=0.01, name="policy")
        out = await asyncio.gather(*(batcher.submit("k", i) for i in items), return_exceptions=True)
        await batcher.close()
        return [type(r).__name__ if isinstance(r, Exception) else r for r in out]

    return asyncio.run(main())


@pytest.mark.parametrize("order", [["a", "b", "poison", "c"], ["poison", "a", "b", "c"],
                                   ["poison-1", "poison-2", "a", "b"]])
def test_a_poison_request_fails_alone_wherever_it_sits_in_its_batch(monkeypatch, order):
    pool = pool_of(monkeypatch)
    out = run(pool, order)
    assert [r == "RayActorError" for r in out] == ["poison" in i for i in order]
    assert pool.broken == [None]
    assert run(pool, ["d"]) == ["ok:d"], "a later request is served"


def test_a_model_that_cannot_serve_is_taken_out_and_later_calls_fail_at_once(monkeypatch):
    pool = pool_of(monkeypatch, dead=True)
    out = run(pool, [f"p{i}" for i in range(12)])
    assert set(out) <= {"RayActorError", "ReplicaDown"} and "ReplicaDown" in out
    assert pool.broken[0] is not None and "3 different problems" in pool.broken[0]
    assert pool.replacements <= 12, "bounded restarts, not three per problem"
    assert run(pool, ["late"]) == ["ReplicaDown"]
    assert pool.revive() == {0} and pool.broken == [None]
