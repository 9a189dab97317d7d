"""Policy backends behind one protocol."""

from treesearch.policy.base import Policy, per_state_counts

__all__ = ["Policy", "per_state_counts"]
