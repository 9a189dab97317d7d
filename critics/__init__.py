"""Critics: value functions over partial solutions, all with `async score(states)`."""

from critics.base import Critic, FunctionCritic, check_values
from critics.registry import as_critic, make_critic, register_critic, registered_critics
from critics.combine import WeightedCritic
from critics.function import value_function
from critics.verifier import VerifierCritic

__all__ = [
    "Critic",
    "FunctionCritic",
    "VerifierCritic",
    "WeightedCritic",
    "as_critic",
    "check_values",
    "make_critic",
    "register_critic",
    "registered_critics",
    "value_function",
]
