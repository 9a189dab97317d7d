"""Policy backends behind one protocol."""

from treesearch.policy.base import ParamsArg, Policy, per_state_counts, per_state_params

__all__ = ["ParamsArg", "Policy", "per_state_counts", "per_state_params"]
