"""The compute budget every search obeys, and the accounting that measures it.

All algorithms check the same `Budget` against the same `Accounting` before each model
request, so accuracy-vs-compute comparisons between them are fair. A search may overrun
a limit only by the requests already in flight when the limit was reached.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class Budget:
    """Per-problem limits; `None` means no limit on that axis (at least one must be set).

    - generated_tokens: tokens the policy generates (expansions, roll-forwards, rollouts)
    - policy_calls: states sent to the policy (one expansion of k samples counts once)
    - simulations: MCTS simulations, beam steps, or samples for the flat baselines
    - seconds: wall time of the search
    """

    generated_tokens: Optional[int] = None
    policy_calls: Optional[int] = None
    simulations: Optional[int] = None
    seconds: Optional[float] = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Budget.{f.name} must be a number or None, got {value!r}")
            if value <= 0:
                raise ValueError(f"Budget.{f.name} must be positive, got {value}")
        if all(getattr(self, f.name) is None for f in fields(self)):
            raise ValueError(
                "Budget is unbounded: set at least one of "
                + ", ".join(f.name for f in fields(self))
            )

    @classmethod
    def from_dict(cls, values: dict) -> "Budget":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown budget field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def parse(cls, value: Any, field: str = "budget") -> Optional["Budget"]:
        """A Budget from what a user or a config gives: a Budget, a mapping (null fields
        are unlimited), or None (None: the caller's default). Errors name `field`."""
        if value is None or isinstance(value, Budget):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{field} must be a Budget or a mapping such as {{generated_tokens: 768}}, got {value!r}")
        try:
            return cls.from_dict({k: v for k, v in value.items() if v is not None})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{field}: {err}") from None

    def exhausted(self, acc: "Accounting") -> bool:
        """True once any limit is reached."""
        return (
            (self.generated_tokens is not None and acc.generated_tokens >= self.generated_tokens)
            or (self.policy_calls is not None and acc.policy_calls >= self.policy_calls)
            or (self.simulations is not None and acc.simulations >= self.simulations)
            or (self.seconds is not None and acc.elapsed() >= self.seconds)
        )


DEFAULT_BUDGET = Budget(generated_tokens=768)
"""The per-problem budget when none is given (the API and the CLI's `search.budget`)."""


@dataclass
class Accounting:
    """What one search spent. Model seconds are time this search waited on models.
    `generated_tokens` counts every generated token, the critic's rollouts included
    (`critic_tokens` of them)."""

    generated_tokens: int = 0
    critic_tokens: int = 0
    prompt_tokens: int = 0
    policy_calls: int = 0
    critic_calls: int = 0
    simulations: int = 0
    seconds: float = 0.0
    seconds_in_model: float = 0.0
    _started: Optional[float] = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.seconds = self.elapsed()
        self._started = None

    def elapsed(self) -> float:
        if self._started is None:
            return self.seconds
        return time.perf_counter() - self._started

    @property
    def seconds_in_engine(self) -> float:
        return max(0.0, self.seconds - self.seconds_in_model)

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["seconds_in_engine"] = self.seconds_in_engine
        return d
