"""The Policy protocol: what every model backend offers the search.

Both calls are batched over states and async, so a runner can gather requests from many
trees into one engine call. Backends differ only in the engine behind them.
"""

from __future__ import annotations

from typing import Protocol, Sequence, Union, runtime_checkable

from treesearch.types import SamplingParams, State, Step

# One SamplingParams for the whole batch, or one per state. Per-state params differ only
# in their seed: the runner batches requests whose other parameters are equal.
ParamsArg = Union[SamplingParams, Sequence[SamplingParams]]


@runtime_checkable
class Policy(Protocol):
    async def expand(
        self, states: Sequence[State], n: Union[int, Sequence[int]], params: ParamsArg
    ) -> list[list[Step]]:
        """For each state, `n` (or `n[i]`) samples of the next step, in order, sampled
        with `params` (or `params[i]`; a seed makes a state's samples reproducible).

        Generation stops at any of `params.stop` (kept in the step text), at end of
        sequence, or after `params.max_new_tokens`.
        """
        ...

    async def complete(self, states: Sequence[State], params: ParamsArg) -> list[list[Step]]:
        """For each state, one sampled completion to the end, split into steps at
        `params.stop` (the stop strings delimit steps here; they do not end generation)."""
        ...


def calls_in_flight(policy) -> int:
    """How many `expand`/`complete` calls a backend serves at once to good effect (its
    optional `calls_in_flight` attribute): 1 for an engine that runs one call to its end
    (the default), more for one that batches continuously, where a new call's requests
    join those running."""
    calls = getattr(policy, "calls_in_flight", 1)
    if not isinstance(calls, int) or calls < 1:
        raise ValueError(f"{type(policy).__name__}.calls_in_flight must be an int >= 1, got {calls!r}")
    return calls


class EngineLost(RuntimeError):
    """A backend's engine died and could not be rebuilt in its process: the process that
    hosts it must be replaced (a Ray policy actor ends itself on it, so its pool starts a
    fresh actor and retries the call)."""


def per_state_counts(states: Sequence[State], n: Union[int, Sequence[int]]) -> list[int]:
    """Normalise the `n` argument of `Policy.expand` to one count per state."""
    counts = [n] * len(states) if isinstance(n, int) else list(n)
    if len(counts) != len(states):
        raise ValueError(f"expand: got {len(counts)} sample counts for {len(states)} states")
    if any(c < 1 for c in counts):
        raise ValueError(f"expand: sample counts must be >= 1, got {counts}")
    return counts


def per_state_params(states: Sequence[State], params: ParamsArg) -> list[SamplingParams]:
    """Normalise the `params` argument to one SamplingParams per state."""
    if isinstance(params, SamplingParams):
        return [params] * len(states)
    params = list(params)
    if len(params) != len(states):
        raise ValueError(f"got {len(params)} sampling params for {len(states)} states")
    return params


class BackendCounters:
    """What a model backend counts: prompt tokens it prefilled vs what prefilling every
    sample's prompt would cost (the prefix-reuse saving), tokens generated, calls."""

    COUNTERS: tuple[str, ...] = ("prompt_tokens_encoded", "prompt_tokens_naive", "generated_tokens", "calls")

    def reset_counters(self) -> None:
        for name in self.COUNTERS:
            setattr(self, name, 0)

    def stats(self) -> dict:
        """The counters as a dict."""
        return {name: getattr(self, name) for name in self.COUNTERS}
