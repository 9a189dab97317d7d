"""treesearch: Monte Carlo tree search (MCTS*) and baseline searches for LLM reasoning."""

from treesearch.api import asearch, search
from treesearch.runner import Runner, RunStats
from treesearch.search import ALGORITHMS, Accounting, Budget, make_algorithm
from treesearch.tasks import Task
from treesearch.tree import Tree
from treesearch.result import SearchResult
from treesearch.types import Problem, SamplingParams, State, Step

__all__ = [
    "ALGORITHMS",
    "Accounting",
    "Budget",
    "Problem",
    "RunStats",
    "Runner",
    "SamplingParams",
    "SearchResult",
    "State",
    "Step",
    "Task",
    "Tree",
    "asearch",
    "make_algorithm",
    "search",
]
