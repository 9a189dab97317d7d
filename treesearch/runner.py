"""The runner: many trees in flight at once, their model requests batched per model.

Each problem's search is a coroutine; up to `trees_in_flight` run concurrently on one
event loop. Their policy and critic requests go through one `Batcher` per model, so the
engine sees batches gathered across trees instead of one request at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Optional, Sequence

from critics.base import Critic, check_values, score_with_cost
from critics.registry import as_critic
from treesearch.batching import Batcher, BatchStats, ModelClock, RoutedBatcher
from treesearch.config import Scheduling
from treesearch.hosting import Replicated
from treesearch.policy.base import Policy, calls_in_flight
from treesearch.search import SearchAlgorithm, SearchContext, make_algorithm
from treesearch.search.answer import select_answer
from treesearch.search.base import grade_terminals
from treesearch.search.budget import DEFAULT_BUDGET, Budget
from treesearch.tasks import Task
from treesearch.result import SearchResult
from treesearch.types import JobStopped, PolicyRequest, Problem, State

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    """Batching and time split of a runner's work (accumulated over its runs)."""

    policy: BatchStats = field(default_factory=BatchStats)
    critic: BatchStats = field(default_factory=BatchStats)
    clock: ModelClock = field(default_factory=ModelClock)
    wall_seconds: float = 0.0

    @property
    def model_seconds(self) -> float:
        """Wall time during which at least one model call was running."""
        return self.clock.busy_seconds

    @property
    def engine_seconds(self) -> float:
        return max(0.0, self.wall_seconds - self.model_seconds)

    def as_dict(self) -> dict:
        return {
            "wall_seconds": self.wall_seconds,
            "model_seconds": self.model_seconds,
            "engine_seconds": self.engine_seconds,
            "engine_share": self.engine_seconds / self.wall_seconds if self.wall_seconds else 0.0,
            "policy": self.policy.as_dict(),
            "critic": self.critic.as_dict(),
        }


# Trees in flight when the policy engine does not say how many requests it runs at once.
FALLBACK_TREES_IN_FLIGHT = 32


def default_trees_in_flight(policy: Any) -> int:
    """Enough trees to fill the policy engine's batch: as many as it serves calls at once
    over all its replicas (`calls_in_flight`; each tree has one request in flight by
    default), and at least `FALLBACK_TREES_IN_FLIGHT` (an engine that runs one call at a
    time, or a pool that caps its calls, batches requests gathered from those trees)."""
    replicas = model_replicas(policy)
    return max(FALLBACK_TREES_IN_FLIGHT, calls_in_flight(policy) * replicas)


def model_replicas(model: Any) -> int:
    return int(model.replicas) if isinstance(model, Replicated) else 1


class Runner:
    """Runs searches for many problems against one policy and (optionally) one critic."""

    def __init__(
        self,
        policy: Policy,
        critic: Any = None,
        task: Optional[Task] = None,
        *,
        max_batch_size: int = Scheduling.max_batch_size,
        max_wait_ms: float = Scheduling.max_wait_ms,
        trees_in_flight: Optional[int] = Scheduling.trees_in_flight,
        policy_concurrency: int = 1,
        critic_concurrency: int = 1,
        policy_calls_in_flight: Optional[int] = None,
    ):
        if trees_in_flight is not None and trees_in_flight < 1:
            raise ValueError(f"trees_in_flight must be >= 1, got {trees_in_flight}")
        if not isinstance(policy, Policy):
            raise TypeError(f"policy {policy!r} lacks expand()/complete(): see treesearch.policy.Policy")
        self.policy = policy
        self.critic: Optional[Critic] = as_critic(critic) if critic is not None else None
        self.task = task or Task()
        self.trees_in_flight = trees_in_flight or default_trees_in_flight(policy)
        # `max_batch_size` is per model replica: with k replicas (concurrency k), a call may
        # hold k times as many requests, which a remote pool scatters over its replicas
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._concurrency = (policy_concurrency, critic_concurrency)
        if policy_calls_in_flight is not None and policy_calls_in_flight < 1:
            raise ValueError(f"policy_calls_in_flight must be >= 1, got {policy_calls_in_flight}")
        self._policy_calls = policy_calls_in_flight or calls_in_flight(policy)
        self.stats = RunStats()

    async def _policy_batch(self, key: Hashable, requests: list[PolicyRequest]) -> Sequence[Any]:
        """One engine call for requests of one kind (the batch key's first part)."""
        kind, _ = key
        states = [r.state for r in requests]
        params = [r.params for r in requests]
        if kind == "complete":
            return await self.policy.complete(states, params)
        counts = [r.n for r in requests]
        out = await self.policy.expand(states, counts, params)
        for i, (steps, n) in enumerate(zip(out, counts)):
            if len(steps) != n:
                raise RuntimeError(f"policy returned {len(steps)} steps for state {i}, asked for {n}")
        return out

    async def _critic_batch(self, key: Hashable, states: list[State]) -> Sequence[tuple[float, int]]:
        """(value, tokens generated to compute it) per state; critics that generate text
        (rollouts) report their tokens through `score_with_cost`."""
        values, tokens = await score_with_cost(self.critic, states)
        values = check_values(values, len(states), repr(self.critic))
        return [(float(v), int(t)) for v, t in zip(values, tokens)]

    def _batcher(self, fn, model: Any, concurrency: int, name: str, state_of: Callable[[Any], State],
                 calls: int = 1):
        """A model's batcher. A replicated model (a Ray pool: `replicas` and `replica_of`)
        gets one batcher per replica; others get one batcher for `concurrency` replicas.
        Each replica has `calls` calls in flight: 1 for an engine that serves one call at a
        time, more for one that batches continuously (a call's requests join the running
        batch). An in-process engine of that kind gets every request as a call of its own,
        at once, so it returns as soon as its own samples are done, not when the slowest
        request of a gathered batch is; across processes calls stay gathered (one hop each)."""
        remote = isinstance(model, Replicated)

        def make(concurrency: int, label: str) -> Batcher:
            if calls > 1 and not remote:
                return Batcher(fn, max_batch_size=1, max_wait_s=0.0, max_concurrency=concurrency * calls,
                               clock=self.stats.clock, name=label)
            return Batcher(fn, max_batch_size=self._max_batch_size * concurrency, max_wait_s=self._max_wait_s,
                           max_concurrency=concurrency * calls, clock=self.stats.clock, name=label)

        if remote and model.replicas > 1:
            parts = [make(1, f"{name}[{i}]") for i in range(model.replicas)]
            return RoutedBatcher(parts, lambda item: model.replica_of(state_of(item)))
        return make(concurrency, name)

    async def run(
        self,
        problems: Iterable[Problem],
        algorithm: Any = "mcts",
        budget: Optional[Budget] = None,
        on_result: Optional[Callable[[SearchResult], Any]] = None,
        keep_results: bool = True,
        **options: Any,
    ) -> list[SearchResult]:
        """Search every problem; results come back in input order. `on_result` is called
        as each finishes (e.g. to write it out); with `keep_results=False` nothing is
        kept after that (a job that writes each result holds no trees), and the list
        returned is empty."""
        algo = make_algorithm(algorithm, **options)
        if algo.needs_critic and self.critic is None:
            raise ValueError(f"algorithm {algo.name!r} needs a critic: pass critic=...")
        budget = budget or DEFAULT_BUDGET
        problems = list(problems)
        policy = self._batcher(self._policy_batch, self.policy, self._concurrency[0], "policy", lambda request: request.state,
                               self._policy_calls)
        policy.stats = self.stats.policy
        critic = None
        if self.critic is not None:
            critic = self._batcher(self._critic_batch, self.critic, self._concurrency[1], "critic", lambda item: item)
            critic.stats = self.stats.critic
        slots = asyncio.Semaphore(self.trees_in_flight)

        async def one(problem: Problem) -> SearchResult:
            async with slots:
                result = await self._search(problem, algo, budget, policy, critic)
            if on_result is not None:
                try:
                    on_result(result)
                except Exception as exc:  # e.g. a failed write: the others go on
                    log.error("on_result failed for problem %r: %s", problem.id, exc)
                    result.error = result.error or f"on_result failed: {type(exc).__name__}: {exc}"
            return result if keep_results else None

        started = time.perf_counter()
        try:
            results = await asyncio.gather(*(one(p) for p in problems))
            return list(results) if keep_results else []
        finally:
            self.stats.wall_seconds += time.perf_counter() - started
            await policy.close()
            if critic is not None:
                await critic.close()

    async def _search(
        self, problem: Problem, algo: SearchAlgorithm, budget: Budget, policy: Batcher, critic: Optional[Batcher]
    ) -> SearchResult:
        ctx = SearchContext(problem, self.task, budget, algo.config, policy, critic)
        ctx.accounting.start()
        error = None
        try:
            await algo.search(ctx)
        except JobStopped:  # nothing can go on: not an error row per problem
            raise
        except Exception as exc:  # one failing problem must not sink the others
            error = f"{type(exc).__name__}: {exc}"
        ctx.accounting.stop()
        choice = select_answer(ctx.tree, self.task, algo.config.answer_selection, algo.config.path_backup)
        correct = None
        if problem.gold is not None:
            def grade() -> bool:
                grade_terminals(ctx.tree, self.task, problem.gold)
                return bool(self.task.grade(choice.answer, problem.gold))

            try:  # grading may be slow (math-verify in a worker): keep it off the event loop
                correct = await asyncio.to_thread(grade)
            except Exception as exc:
                correct = False
                error = error or f"grading failed: {type(exc).__name__}: {exc}"
        return SearchResult(
            problem=problem,
            answer=choice.answer,
            correct=correct,
            algorithm=algo.name,
            answer_selection=algo.config.answer_selection,
            value=choice.value,
            solution="".join(ctx.tree.steps(choice.node)),
            tree=ctx.tree,
            accounting=ctx.accounting,
            candidates=choice.candidates,
            error=error,
        )
