"""The Policy protocol: what every model backend offers the search.

Both calls are batched over states and async, so a runner can gather requests from many
trees into one engine call. Backends differ only in the engine behind them.
"""

from __future__ import annotations

from typing import Protocol, Sequence, Union, runtime_checkable

from treesearch.types import SamplingParams, State, Step


@runtime_checkable
class Policy(Protocol):
    async def expand(
        self, states: Sequence[State], n: Union[int, Sequence[int]], params: SamplingParams
    ) -> list[list[Step]]:
        """For each state, `n` (or `n[i]`) samples of the next step, in order.

        Generation stops at any of `params.stop` (kept in the step text), at end of
        sequence, or after `params.max_new_tokens`.
        """
        ...

    async def complete(self, states: Sequence[State], params: SamplingParams) -> list[list[Step]]:
        """For each state, one sampled completion to the end, split into steps at
        `params.stop` (the stop strings delimit steps here; they do not end generation)."""
        ...


def per_state_counts(states: Sequence[State], n: Union[int, Sequence[int]]) -> list[int]:
    """Normalise the `n` argument of `Policy.expand` to one count per state."""
    counts = [n] * len(states) if isinstance(n, int) else list(n)
    if len(counts) != len(states):
        raise ValueError(f"expand: got {len(counts)} sample counts for {len(states)} states")
    if any(c < 1 for c in counts):
        raise ValueError(f"expand: sample counts must be >= 1, got {counts}")
    return counts
