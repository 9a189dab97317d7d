"""The Python API: `search` (sync) and `asearch` (async)."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, Optional, Union

from treesearch.runner import Runner, Scheduling
from treesearch.search.budget import Budget
from treesearch.tasks import Task
from treesearch.result import SearchResult
from treesearch.types import Problem

ProblemLike = Union[Problem, str, dict]


def as_problem(item: ProblemLike, index: int) -> Problem:
    """A Problem from a Problem, a question string, or a dict with `question` (and
    optionally `id`, `gold`/`answer`)."""
    if isinstance(item, Problem):
        return item
    if isinstance(item, str):
        return Problem(id=str(index), question=item)
    if isinstance(item, dict):
        if "question" not in item:
            raise ValueError(f"problem {index}: missing field 'question' (got {sorted(item)})")
        gold = item.get("gold", item.get("answer"))
        meta = {k: v for k, v in item.items() if k not in {"id", "question", "gold", "answer"}}
        return Problem(
            id=str(item.get("id", index)),
            question=item["question"],
            gold=None if gold is None else str(gold),
            meta=meta,
        )
    raise TypeError(f"problem {index}: expected Problem, str or dict, got {type(item).__name__}")


def _budget(budget: Union[Budget, dict, None]) -> Optional[Budget]:
    if budget is None or isinstance(budget, Budget):
        return budget
    if isinstance(budget, dict):
        return Budget.from_dict(budget)
    raise TypeError(f"budget must be a Budget or dict, got {type(budget).__name__}")


async def asearch(
    problems: Union[ProblemLike, Iterable[ProblemLike]],
    policy: Any,
    critic: Any = None,
    algorithm: Any = "mcts",
    budget: Union[Budget, dict, None] = None,
    task: Optional[Task] = None,
    *,
    max_batch_size: int = Scheduling.max_batch_size,
    max_wait_ms: float = Scheduling.max_wait_ms,
    trees_in_flight: int = Scheduling.trees_in_flight,
    **config: Any,
) -> list[SearchResult]:
    """Search each problem with `algorithm` ("mcts", "beam", "best_of_n",
    "self_consistency", "greedy"), valuing states with `critic` (a Critic, a registered
    name, or a plain function `state -> float`), within `budget` per problem.
    `config` holds the algorithm's options (e.g. `c_puct=1.5`, `expansions=4`).
    """
    if isinstance(problems, (Problem, str, dict)):
        problems = [problems]
    items = [as_problem(p, i) for i, p in enumerate(problems)]
    runner = Runner(
        policy,
        critic,
        task,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        trees_in_flight=trees_in_flight,
    )
    return await runner.run(items, algorithm, _budget(budget), **config)


def search(*args: Any, **kwargs: Any) -> list[SearchResult]:
    """Synchronous `asearch` (same arguments). Inside a running event loop (e.g. a
    notebook), `await asearch(...)` instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(asearch(*args, **kwargs))
    raise RuntimeError("treesearch.search() called inside a running event loop: use `await treesearch.asearch(...)`")
