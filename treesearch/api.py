"""The Python API: `search` (sync) and `asearch` (async)."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, Mapping, Optional, Union

from treesearch.config import Scheduling
from treesearch.runner import Runner
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


async def asearch(
    problems: Union[ProblemLike, Iterable[ProblemLike]],
    policy: Any,
    critic: Any = None,
    algorithm: Any = "mcts",
    budget: Union[Budget, dict, None] = None,
    task: Union[Task, Mapping, None] = None,
    *,
    cluster: Union[str, Mapping, None] = None,
    max_batch_size: int = Scheduling.max_batch_size,
    max_wait_ms: float = Scheduling.max_wait_ms,
    trees_in_flight: Optional[int] = Scheduling.trees_in_flight,
    **config: Any,
) -> list[SearchResult]:
    """Search each problem with `algorithm` ("mcts", "beam", "best_of_n",
    "self_consistency", "greedy"), valuing states with `critic` (a Critic, a registered
    name, or a plain function `state -> float`), within `budget` per problem.
    `config` holds the algorithm's options (e.g. `c_puct=1.5`, `expansions=4`).

    `policy` and `critic` may instead be config mappings, as in a job's `policy` and
    `critic` sections (`{"backend": "hf", "model": "smollm2"}`, `{"name": "self_eval",
    "model": "smollm2"}`); they are then built where `cluster` says, like a job's:
    "inprocess" (the default), "ray" (Ray actor pools on a local or joined cluster), or a
    `cluster` config mapping (`{"kind": "ray", "address": "auto", "policy": {"replicas": 2}}`),
    and shut down when the search ends. `task` may then be a task config mapping
    (`{"name": "gsm8k"}`), which critics that grade (verifier, rollout) need on Ray.
    """
    if isinstance(problems, (Problem, str, dict)):
        problems = [problems]
    items = [as_problem(p, i) for i, p in enumerate(problems)]
    budget = Budget.parse(budget)  # bad values fail here, before any model is built
    scheduling = {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "trees_in_flight": trees_in_flight}
    if isinstance(task, Mapping):
        from treesearch.components import build_task

        task_spec, task = dict(task), build_task(task)
    else:
        task_spec = None
    if cluster is None and not isinstance(policy, Mapping) and not isinstance(critic, Mapping):
        runner = Runner(policy, critic, task, **scheduling)
        return await runner.run(items, algorithm, budget, **config)
    models = await asyncio.to_thread(_start_models, policy, critic, task_spec, cluster)
    try:
        await asyncio.to_thread(models.ready)
        clients = models.clients()
        runner = Runner(clients.policy, clients.critic, task, policy_concurrency=clients.policy_concurrency,
                        critic_concurrency=clients.critic_concurrency, **scheduling)
        return await runner.run(items, algorithm, budget, **config)
    finally:
        models.shutdown()


def _start_models(policy: Any, critic: Any, task_spec: Optional[dict], cluster: Union[str, Mapping, None]):
    """The models of a `search()` whose policy (and critic) are config mappings."""
    from treesearch.jobs import start_models

    if not isinstance(policy, Mapping):
        why = f"with cluster={cluster!r}" if cluster is not None else "with a critic config mapping"
        raise TypeError(f"{why}, policy must be a config mapping such as "
                        f"{{'backend': 'hf', 'model': 'smollm2'}} too (got {type(policy).__name__})")
    if critic is not None and not isinstance(critic, Mapping):
        if not isinstance(critic, str):
            raise TypeError(f"with cluster={cluster!r} or a policy config, critic must be a config mapping "
                            f"such as {{'name': 'self_eval', 'model': 'smollm2'}} or a name (got {type(critic).__name__})")
        critic = {"name": critic}
    critic_spec = dict(critic) if critic is not None else {"name": None}
    if critic_spec.get("name") in ("verifier", "rollout") and task_spec is None:
        raise ValueError(f"the {critic_spec['name']} critic grades against gold answers: pass task as a config "
                         "mapping such as {'name': 'gsm8k'}")
    if cluster is None or isinstance(cluster, str):
        kind = {None: "inprocess", "local": "ray"}.get(cluster, cluster)
        cluster = {"kind": kind}
    return start_models({"policy": dict(policy), "critic": critic_spec, "task": task_spec or {}, "cluster": dict(cluster)})


def search(*args: Any, **kwargs: Any) -> list[SearchResult]:
    """Synchronous `asearch` (same arguments). Inside a running event loop (e.g. a
    notebook), `await asearch(...)` instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(asearch(*args, **kwargs))
    raise RuntimeError("treesearch.search() called inside a running event loop: use `await treesearch.asearch(...)`")
