"""Plain data types shared by every part of the engine.

A `Problem` goes in, a search grows a `Tree` of steps, the policy proposes `Step`s for a
`State` (a problem plus the steps taken so far), critics value `State`s, and a
`SearchResult` (`treesearch.result`) comes out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

# A prompt is either plain text or chat messages ({"role": ..., "content": ...}).
Prompt = Union[str, Sequence[dict]]

FINISH_REASONS = ("stop", "eos", "length")
"""Why a step ended: at the step delimiter, at end of sequence, or at the token limit."""


@dataclass(frozen=True)
class Problem:
    """One question to solve. `gold` is the reference answer when known."""

    id: str
    question: str
    gold: Optional[str] = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"problem {self.id!r}: question is empty")


@dataclass(frozen=True)
class Step:
    """A policy's proposal for the next reasoning step.

    `text` includes the step delimiter when the step ended at it, so that the solution
    so far is exactly the concatenation of its steps' texts. `logprob` is the summed
    log-probability of the step's tokens. `prompt_tokens` is the number of prompt tokens
    the engine encoded for the request, carried by the first step of each request's
    answer (0 on the others), so that accounting adds it once.
    """

    text: str
    num_tokens: int
    logprob: float = 0.0
    finish_reason: str = "stop"
    token_ids: Optional[tuple[int, ...]] = None
    prompt_tokens: int = 0

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(
                f"Step.finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}"
            )


@dataclass(frozen=True)
class State:
    """A partial (or complete) solution: what policies continue and critics value."""

    problem: Problem
    prompt: Prompt
    steps: tuple[str, ...] = ()
    terminal: bool = False
    answer: Optional[str] = None
    node: int = 0

    @property
    def solution(self) -> str:
        """The solution text so far (the steps, concatenated)."""
        return "".join(self.steps)

    @property
    def depth(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class SamplingParams:
    """How the policy samples. `stop` holds the strings that end a step."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


POLICY_REQUESTS = ("expand", "complete")


@dataclass(frozen=True)
class PolicyRequest:
    """One request from a search to the policy, unchanged from the search context through
    the batcher to the runner's call of the Policy protocol: `kind` "expand" (`n` next
    steps of `state`) or "complete" (one completion of `state`), sampled with `params`."""

    kind: str
    state: State
    params: SamplingParams
    n: int = 1

    def __post_init__(self) -> None:
        if self.kind not in POLICY_REQUESTS:
            raise ValueError(f"PolicyRequest.kind must be one of {POLICY_REQUESTS}, got {self.kind!r}")
        if self.n < 1:
            raise ValueError(f"PolicyRequest.n must be >= 1, got {self.n}")

    @property
    def batch_key(self) -> tuple:
        """Requests batch together when all but their seeds agree."""
        return (self.kind, dataclasses.replace(self.params, seed=None))


class JobStopped(RuntimeError):
    """Raised by a model host when no problem of the job can go on (its Ray cluster is
    gone, say): the runner stops the job instead of writing an error row per problem, and
    the run folder keeps every result finished so far for a resume."""
