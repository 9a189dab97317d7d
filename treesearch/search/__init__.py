"""Search algorithms, one per module, all obeying the same `Budget`."""

from __future__ import annotations

from typing import Any

from treesearch.registry import Registry
from treesearch.search.base import SearchAlgorithm, SearchConfig, SearchContext
from treesearch.search.beam import BeamSearch
from treesearch.search.best_of_n import BestOfN
from treesearch.search.budget import Accounting, Budget
from treesearch.search.greedy import Greedy
from treesearch.search.mcts import MCTSStar
from treesearch.search.self_consistency import SelfConsistency

ALGORITHMS: Registry[SearchAlgorithm] = Registry(
    "algorithm", {cls.name: cls for cls in (Greedy, SelfConsistency, BestOfN, BeamSearch, MCTSStar)}
)


def make_algorithm(algorithm: Any, **options: Any) -> SearchAlgorithm:
    """An algorithm instance from a name ("mcts", "beam", ...), a class, or an instance."""
    if isinstance(algorithm, SearchAlgorithm):
        if options:
            raise TypeError("options cannot be given with an algorithm instance")
        return algorithm
    if isinstance(algorithm, type) and issubclass(algorithm, SearchAlgorithm):
        return algorithm(**options)
    return ALGORITHMS.make(algorithm, **options)


__all__ = [
    "ALGORITHMS",
    "Accounting",
    "BeamSearch",
    "BestOfN",
    "Budget",
    "Greedy",
    "MCTSStar",
    "SearchAlgorithm",
    "SearchConfig",
    "SearchContext",
    "SelfConsistency",
    "make_algorithm",
]
