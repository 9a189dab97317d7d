"""What every search algorithm shares: its config base, and the context through which it
grows a tree. Algorithms never call a model: they ask the context, which sends requests to
the runner's batchers, adds the results to the tree, and keeps the accounting."""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Hashable, Optional, Sequence

import numpy as np

from treesearch.batching import Batcher, ModelClock
from treesearch.search.answer import ANSWER_SELECTIONS
from treesearch.search.budget import Accounting, Budget
from treesearch.search.selection import PRIOR_MODES, step_priors
from treesearch.tasks import Task
from treesearch.tree import Tree
from treesearch.types import PolicyRequest, Problem, SamplingParams, State, Step


@dataclass
class SearchConfig:
    """Options every algorithm has. Subclasses add their own fields.

    - temperature, top_p: sampling of steps (greedy parts always use temperature 0)
    - max_step_tokens: token limit of one step; max_solution_tokens: of a whole completion
    - max_depth: steps from the root after which a path is cut off (closed, no answer)
    - answer_selection: "value", "path_mean", "majority" or "weighted" (see `select_answer`)
    - seed: base seed; each request derives its own from it (None: nondeterministic)

    - prior: how sibling priors come from step log-probabilities (see `step_priors`)
    - merge_duplicates: merge identical sibling steps into one node

    These dataclasses hold the one set of defaults: the CLI's search configs are built
    from them (`treesearch/config.py`).
    """

    temperature: float = 0.7
    top_p: float = 1.0
    max_step_tokens: int = 128
    max_solution_tokens: int = 512
    max_depth: int = 12
    answer_selection: str = "value"
    seed: Optional[int] = 0
    prior: str = "mean_logprob"
    merge_duplicates: bool = True

    @property
    def path_backup(self) -> str:
        """How a path's values combine when answers are chosen: "mean" unless the
        algorithm backs values up its own way (MCTS* `backup`)."""
        return "mean"

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        positive = ("max_step_tokens", "max_solution_tokens", "max_depth")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"{type(self).__name__}.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{type(self).__name__}.top_p must be in (0, 1], got {self.top_p}")
        if self.prior not in PRIOR_MODES:
            raise ValueError(f"{type(self).__name__}.prior must be one of {PRIOR_MODES}, got {self.prior!r}")
        if self.answer_selection not in ANSWER_SELECTIONS:
            raise ValueError(
                f"{type(self).__name__}.answer_selection must be one of {ANSWER_SELECTIONS}, "
                f"got {self.answer_selection!r}"
            )

    @classmethod
    def from_dict(cls, algorithm: str, values: dict[str, Any]) -> "SearchConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for algorithm {algorithm!r}; options: {sorted(names)}"
            )
        config = cls(**values)
        config.validate()
        return config


class SearchAlgorithm:
    """Base class: `search(ctx)` grows `ctx.tree` within `ctx.budget`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[SearchConfig]] = SearchConfig
    needs_critic: ClassVar[bool] = False

    def __init__(self, config: Optional[SearchConfig] = None, **options: Any):
        if config is None:
            config = self.Config.from_dict(self.name, options)
        elif options:
            raise TypeError("pass either a config object or keyword options, not both")
        else:
            config.validate()
        self.config = config

    async def search(self, ctx: "SearchContext") -> None:  # pragma: no cover - interface
        raise NotImplementedError


class SearchContext:
    """One problem's search: its tree, budget, accounting and model access."""

    def __init__(
        self,
        problem: Problem,
        task: Task,
        budget: Budget,
        config: SearchConfig,
        policy: Batcher,
        critic: Optional[Batcher] = None,
    ):
        self.problem = problem
        self.task = task
        self.budget = budget
        self.config = config
        self.prompt = task.prompt(problem)
        self.tree = Tree(problem.id, self.prompt)
        self.accounting = Accounting()
        self._policy = policy
        self._critic = critic
        self._requests = 0
        self._reserved_tokens = 0  # worst-case tokens of the policy requests in flight
        self._waiting = ModelClock()  # time this search had a model request outstanding

    # -------------------------------------------------------------- helpers
    def exhausted(self) -> bool:
        """A budget limit has been reached."""
        return self.budget.exhausted(self.accounting)

    def uncommitted_tokens(self) -> Optional[int]:
        """Generated tokens left in the budget, less the most the policy requests in
        flight can still generate (None without a token budget)."""
        if self.budget.generated_tokens is None:
            return None
        return self.budget.generated_tokens - self.accounting.generated_tokens - self._reserved_tokens

    def can_spend(self) -> bool:
        """No limit is reached and some generated tokens are not yet committed to
        requests in flight: a new policy request may go out."""
        left = self.uncommitted_tokens()
        return not self.exhausted() and (left is None or left > 0)

    def affordable(self, wanted: int, tokens_each: int) -> int:
        """How many of `wanted` requests (or samples) of at most `tokens_each` generated
        tokens may go out now: all without a token budget, else as many as the
        uncommitted tokens cover, rounded up, so that a search that sizes its requests
        this way overruns its token budget by less than `tokens_each`."""
        left = self.uncommitted_tokens()
        if left is None:
            return wanted
        if left <= 0:
            return 0
        return min(wanted, -(-left // max(tokens_each, 1)))

    def state(self, node: int) -> State:
        tree = self.tree
        return State(
            problem=self.problem,
            prompt=self.prompt,
            steps=tree.steps(node),
            terminal=bool(tree.terminal[node]),
            answer=tree.answer[node],
            node=int(node),
        )

    def sampling(self, *, greedy: bool = False, whole_solution: bool = False) -> SamplingParams:
        """Sampling parameters for the next request (each gets its own derived seed)."""
        cfg = self.config
        seed = None
        if cfg.seed is not None:
            self._requests += 1
            seed = (cfg.seed * 1_000_003 + zlib.crc32(self.problem.id.encode()) + self._requests) % 2**31
        return SamplingParams(
            temperature=0.0 if greedy else cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_solution_tokens if whole_solution else cfg.max_step_tokens,
            stop=(self.task.step_delimiter,),
            seed=seed,
        )

    def outcome(self, state: State, step: Step) -> tuple[bool, Optional[str]]:
        """Whether `step` after `state` ends the solution, and the answer it then gives."""
        terminal = step.finish_reason == "eos" or self.task.is_terminal(step.text)
        answer = self.task.extract_answer(state.solution + step.text) if terminal else None
        return terminal, answer

    async def _ask(self, batcher: Batcher, key: Hashable, item: Any) -> Any:
        self._waiting.enter()
        try:
            return await batcher.submit(key, item)
        finally:
            self._waiting.leave()
            self.accounting.seconds_in_model = self._waiting.busy_seconds

    async def _ask_policy(self, kind: str, state: State, params: SamplingParams, n: int = 1) -> Any:
        # While in flight, the request's worst case (n samples of max_new_tokens) is
        # reserved against the token budget (see `affordable`).
        request = PolicyRequest(kind, state, params, n)
        reserved = n * params.max_new_tokens
        self._reserved_tokens += reserved
        try:
            return await self._ask(self._policy, request.batch_key, request)
        finally:
            self._reserved_tokens -= reserved

    def _account(self, steps: Sequence[Step]) -> None:
        self.accounting.policy_calls += 1
        self.accounting.generated_tokens += sum(s.num_tokens for s in steps)
        self.accounting.prompt_tokens += sum(s.prompt_tokens for s in steps)

    # ------------------------------------------------------------- requests
    async def expand(
        self, node: int, n: int, params: Optional[SamplingParams] = None, *, widenable: bool = False
    ) -> np.ndarray:
        """Ask the policy for `n` next steps of `node` and add them as its children
        (identical steps merged); return the new child ids. Fewer than `n` are asked
        for when the token budget cannot cover `n` steps of `max_new_tokens` (see
        `affordable`; none at all: nothing changes and no id is returned).

        A node that is already expanded is widened: the new steps are added after its
        children, a step identical to an existing child is merged into it, and the
        sibling priors are re-normalised. `widenable` marks the node as one that may
        widen later (`Tree.can_widen`), so it stays open while its children are closed.
        Nodes at `max_depth` are closed."""
        if n < 1:
            raise ValueError(f"expand: n must be >= 1, got {n}")
        params = params or self.sampling()
        n = self.affordable(n, params.max_new_tokens)
        if n == 0:
            return np.zeros(0, dtype=np.int32)
        state = self.state(node)
        steps: list[Step] = await self._ask_policy("expand", state, params, n)
        self._account(steps)
        tree = self.tree
        tree.samples[node] += len(steps)
        if widenable:
            tree.can_widen[node] = True
        steps = [s for s in steps if s.text.strip() or s.finish_reason == "eos"]
        if not tree.expanded[node]:
            steps, dups = merge_identical(steps) if self.config.merge_duplicates else (steps, np.zeros(len(steps)))
            ids = self._add_children(node, state, steps, np.ones(len(steps)), dups)
        else:
            ids = self._widen(node, state, steps)
        if ids.size:
            self._renormalise_priors(node)
        return ids

    def _widen(self, node: int, state: State, steps: Sequence[Step]) -> np.ndarray:
        """Add `steps` after `node`'s existing children; with `merge_duplicates`, a step
        identical to an existing child (or to another new one) is merged into it."""
        tree = self.tree
        if not self.config.merge_duplicates:
            return self._add_children(node, state, steps, np.ones(len(steps)), np.zeros(len(steps)), extend=True)
        existing = {tree.text[int(k)].strip(): int(k) for k in tree.children(node)}
        steps, dups = merge_identical(steps)
        fresh, fresh_dups = [], []
        for step, dup in zip(steps, dups):
            child = existing.get(step.text.strip())
            if child is None:
                fresh.append(step)
                fresh_dups.append(dup)
            else:
                tree.duplicates[child] += 1 + int(dup)
        if not fresh:
            return np.zeros(0, dtype=np.int32)
        return self._add_children(node, state, fresh, np.ones(len(fresh)), np.asarray(fresh_dups), extend=True)

    def _renormalise_priors(self, node: int) -> None:
        """Priors of all of `node`'s children from their step log-probabilities (see
        `step_priors`), each weighted by the samples merged into it."""
        tree = self.tree
        kids = tree.children(node)
        weights = step_priors(tree.logprob[kids], tree.num_tokens[kids], self.config.prior)
        weights = weights * (1 + tree.duplicates[kids])
        tree.set_priors(node, weights / weights.sum())

    async def sample_solutions(self, node: int, count: int) -> list[list[Step]]:
        """`count` sampled completions of `node` (each request with its own seed), as
        lists of steps; nothing is added to the tree yet (see `add_solutions`)."""
        state = self.state(node)
        params = [self.sampling(whole_solution=True) for _ in range(count)]
        return list(await asyncio.gather(*(self.complete_state(state, p) for p in params)))

    async def complete_state(self, state: State, params: SamplingParams) -> list[Step]:
        """One completion of `state` under `params`, split into non-empty steps and cut
        after the first step that ends the solution (its tokens still count)."""
        steps: list[Step] = await self._ask_policy("complete", state, params)
        self._account(steps)
        kept: list[Step] = []
        for step in steps:
            if not (step.text.strip() or step.finish_reason == "eos"):
                continue
            kept.append(step)
            if self.outcome(dataclasses.replace(state, steps=state.steps + tuple(k.text for k in kept[:-1])), step)[0]:
                break  # the solution ends at its first answer: one sample, one vote
        return kept

    def add_solutions(self, node: int, solutions: Sequence[Sequence[Step]]) -> list[int]:
        """Insert completions of `node` as a prefix tree (identical steps at the same place
        share a node; `duplicates` counts the extra samples through it, priors are the
        sample fractions). Returns the last node of each solution, in order."""
        tree = self.tree
        if tree.expanded[node]:
            raise ValueError(f"add_solutions: node {node} already has children")
        last = [node] * len(solutions)
        frontier: dict[int, list[tuple[int, int]]] = {node: [(i, 0) for i in range(len(solutions))]}
        while frontier:
            following: dict[int, list[tuple[int, int]]] = {}
            for parent, members in frontier.items():
                groups: dict[str, list[tuple[int, int]]] = {}
                for i, pos in members:
                    if pos < len(solutions[i]):
                        groups.setdefault(solutions[i][pos].text, []).append((i, pos + 1))
                    else:
                        last[i] = parent
                if not groups:
                    continue
                counts = np.array([len(g) for g in groups.values()], dtype=np.float64)
                steps = [solutions[g[0][0]][g[0][1] - 1] for g in groups.values()]
                tree.samples[parent] += int(counts.sum())
                ids = self._add_children(parent, self.state(parent), steps, counts / counts.sum(), counts - 1)
                following.update(zip((int(c) for c in ids), groups.values()))
            frontier = following
        for leaf in set(last):
            if not tree.expanded[leaf] and not tree.closed[leaf]:
                tree.close(leaf)  # the completion stopped without an answer
        return last

    async def roll_forward(self, node: int, max_steps: int) -> State:
        """Greedily extend `node` by up to `max_steps` steps without adding them to the
        tree (their tokens count); return the state reached."""
        state = self.state(node)
        for _ in range(max_steps):
            if state.terminal or self.affordable(1, self.config.max_step_tokens) == 0:
                break
            params = self.sampling(greedy=True)
            (step,) = await self._ask_policy("expand", state, params, 1)
            self._account([step])
            terminal, answer = self.outcome(state, step)
            state = dataclasses.replace(
                state, steps=state.steps + (step.text,), terminal=terminal, answer=answer
            )
        return state

    async def score(self, nodes: Sequence[int]) -> np.ndarray:
        """Critic values of `nodes` (stored in the tree's `critic_value`)."""
        return await self.score_states([self.state(int(i)) for i in nodes], nodes)

    async def score_states(self, states: Sequence[State], nodes: Optional[Sequence[int]] = None) -> np.ndarray:
        """Critic values of arbitrary states; stored on `nodes` when given."""
        if self._critic is None:
            raise RuntimeError("this algorithm needs a critic: pass critic=...")
        if not states:
            return np.zeros(0)
        self.accounting.critic_calls += len(states)
        scored = await asyncio.gather(*(self._ask(self._critic, "score", s) for s in states))
        out = np.asarray([value for value, _ in scored], dtype=np.float64)
        critic_tokens = sum(tokens for _, tokens in scored)
        self.accounting.critic_tokens += critic_tokens
        self.accounting.generated_tokens += critic_tokens
        if nodes is not None:
            self.tree.critic_value[np.asarray(nodes, dtype=np.int64)] = out
        return out

    # ------------------------------------------------------------ tree growth
    def _add_children(
        self,
        node: int,
        state: State,
        steps: Sequence[Step],
        priors: np.ndarray,
        duplicates: np.ndarray,
        extend: bool = False,
    ) -> np.ndarray:
        """Add `steps` as (more, with `extend`) children of `node`: mark terminals and
        extract their answers, close nodes that end or hit `max_depth` (and `node` if its
        first expansion brought no step)."""
        tree = self.tree
        if not steps:
            if not extend:
                tree.add_children(node, [])
                tree.stop_widening(node)  # a dead end: nothing to widen either
            return np.zeros(0, dtype=np.int32)
        kept = steps
        outcomes = [self.outcome(state, step) for step in kept]
        terminal = [t for t, _ in outcomes]
        answers = [a for _, a in outcomes]
        ids = tree.add_children(
            node,
            [s.text for s in kept],
            priors=priors,
            num_tokens=[s.num_tokens for s in kept],
            logprobs=[s.logprob for s in kept],
            finish_reasons=[s.finish_reason for s in kept],
            terminal=terminal,
            answers=answers,
            duplicates=duplicates,
            extend=extend,
        )
        for child, is_terminal in zip(ids, terminal):
            if is_terminal or tree.depth[child] >= self.config.max_depth:
                tree.close(int(child))
        return ids


def merge_identical(steps: Sequence[Step]) -> tuple[list[Step], np.ndarray]:
    """Merge sibling steps whose texts match after stripping whitespace: the first copy
    is kept and `duplicates` counts the copies dropped."""
    index: dict[str, int] = {}
    kept: list[Step] = []
    dups: list[int] = []
    for step in steps:
        key = step.text.strip()
        if key in index:
            dups[index[key]] += 1
            continue
        index[key] = len(kept)
        kept.append(step)
        dups.append(0)
    return kept, np.asarray(dups, dtype=np.int64)


def grade_terminals(tree: Tree, task: Task, gold: Optional[str]) -> None:
    """Grade every answered terminal node against `gold` into `tree.reward` (1/0). A node
    the grader could not decide (a timeout) keeps reward NaN and is listed in
    `tree.meta["ungraded_nodes"]`. Blocking: run it off the event loop."""
    if gold is None:
        return
    for node in tree.terminal_nodes():
        graded = task.grade_outcome(tree.answer[node], gold)
        if graded is None:
            tree.meta.setdefault("ungraded_nodes", []).append(int(node))
        else:
            tree.reward[node] = float(graded)
