"""Compiled loops over the node store's arrays (numba, compiled on first use and cached).

The tree's hot paths walk a handful of nodes each, so numpy's per-call overhead on tiny
slices, not arithmetic, bounds them. These kernels do the walks in one compiled call:

- `sibling_list`: a node's children, following `next_sibling` through its batches;
- `child_score`: the PUCT/UCT score of one child (the formula in `search.selection`);
- `best_child`: the open child with the highest score (ties to the lowest id);
- `children_fall_short`: the widening margin test (no child as good as the node promised);
- `descend`: follow best children from a node down to an unexpanded node (or to a node
  that should widen), taking a virtual loss on each child chosen;
- `backup`: one visit and one value on every node of a path, releasing virtual loss;
- `close_upward`: close a node and every ancestor whose children are all closed.

Every kernel takes plain arrays and scalars, so it can also run on arrays that are not a
`Tree` (tests check them against straightforward Python).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

RULE_PUCT = 0
RULE_UCT = 1

# descend's outcomes
REACHED_LEAF = 0  # the last node of the path is not expanded
DEAD_END = 1  # an expanded node with no open child
PATH_FULL = 2  # the path buffer is full: grow it and descend again from the last node
WIDEN = 3  # the last node of the path (or the start) should get more children
REVISIT = 4  # the last node has no open child and is not due another sample yet


@njit(cache=True, nogil=True)
def sibling_list(first, count, next_sibling):
    """The `count` children linked from `first` (ids as int32)."""
    out = np.empty(count, dtype=np.int32)
    child = first
    for i in range(count):
        out[i] = child
        child = next_sibling[child]
    return out


@njit(cache=True, nogil=True)
def node_q(visits, value_sum, value_max, critic_value, node, max_backup):
    """Q of one node: the backed-up mean (or max) once visited, else the critic's value."""
    if visits[node] > 0:
        if max_backup:
            return value_max[node]
        return value_sum[node] / visits[node]
    return np.float64(critic_value[node])


@njit(cache=True, nogil=True)
def child_score(q, n, vl, prior, parent_n, c, rule, vl_value, q_low, q_high):
    """Selection score of a child with value `q` (not NaN), visits `n`, virtual loss `vl`.
    Q (with its virtual loss) is mapped from [q_low, q_high] to [0, 1] when q_high > q_low
    (min-max normalisation; pass 0 and 1 to use values as they are)."""
    n_eff = max(n, 1.0)
    q_vl = (q * n_eff + vl_value * vl) / (n_eff + vl)
    if q_high > q_low:
        q_vl = (q_vl - q_low) / (q_high - q_low)
    if rule == RULE_PUCT:
        return q_vl + c * prior * math.sqrt(parent_n) / (1.0 + n + vl)
    return q_vl + c * math.sqrt(math.log(parent_n + 1.0) / (1.0 + n + vl))


@njit(cache=True, nogil=True)
def best_child(node, first_child, next_sibling, closed, visits, virtual_loss, value_sum,
               value_max, critic_value, prior, c, rule, max_backup, vl_value, fpu, q_low, q_high):
    """The open child of `node` with the highest score, or -1 if none is open."""
    parent_n = np.float64(visits[node] + virtual_loss[node])
    best, best_score = -1, -np.inf
    child = first_child[node]
    while child >= 0:
        if not closed[child]:
            q = node_q(visits, value_sum, value_max, critic_value, child, max_backup)
            if math.isnan(q):
                q = fpu
            score = child_score(q, np.float64(visits[child]), np.float64(virtual_loss[child]),
                                np.float64(prior[child]), parent_n, c, rule, vl_value, q_low, q_high)
            if score > best_score:
                best, best_score = child, score
        child = next_sibling[child]
    return best


@njit(cache=True, nogil=True)
def allowed_samples(k, visits, alpha):
    """Samples a node may have drawn after `visits` visits under progressive widening:
    `ceil(k * max(visits, 1) ** alpha)`."""
    return math.ceil(k * max(np.float64(visits), 1.0) ** alpha - 1e-9)


@njit(cache=True, nogil=True)
def should_widen(node, parent, first_child, next_sibling, can_widen, samples, visits, value_sum,
                 value_max, critic_value, widen_k, max_backup, k0_root, k0, alpha, margin):
    """Whether expanded `node` should get more children now, if it may widen at all.
    A node the critic valued widens when its best child's Q is below that value by more
    than `margin` (with `margin` >= 0: no child is as good as the node promised); a node
    without a value (the root) when it has drawn fewer than `ceil(k0 * N ** alpha)`
    samples after N visits (progressive widening; `k0_root` at the root). A saturated
    node (`widen_k` set: its draws stopped bringing unseen steps) is paced by visits
    alone, `ceil(widen_k * N ** alpha)` samples after N visits, and a valued one only
    while its children still fall short of its value."""
    if not can_widen[node]:
        return False
    own = np.float64(critic_value[node])
    paced = np.float64(widen_k[node])
    if not math.isnan(paced):
        if samples[node] >= allowed_samples(paced, visits[node], alpha):
            return False
        if math.isnan(own):
            return True
    elif math.isnan(own):
        k = k0_root if parent[node] < 0 else k0
        return samples[node] < allowed_samples(k, visits[node], alpha)
    return children_fall_short(node, first_child, next_sibling, visits, value_sum, value_max, critic_value,
                               max_backup, margin)


@njit(cache=True, nogil=True)
def children_fall_short(node, first_child, next_sibling, visits, value_sum, value_max, critic_value,
                        max_backup, margin):
    """Whether no child of `node` is as good as it promised: with `margin` >= 0 (< 0: never),
    its best child's Q (children without a Q left out; none: -inf) is below its critic
    value by more than `margin`. The node must have a critic value."""
    if margin < 0:
        return False
    best = -np.inf
    child = first_child[node]
    while child >= 0:
        q = node_q(visits, value_sum, value_max, critic_value, child, max_backup)
        if not math.isnan(q) and q > best:
            best = q
        child = next_sibling[child]
    return best < np.float64(critic_value[node]) - margin


@njit(cache=True, nogil=True)
def descend(start, path_out, expanded, parent, first_child, next_sibling, closed, can_widen,
            samples, widen_k, visits, virtual_loss, value_sum, value_max, critic_value, prior, c, rule,
            max_backup, vl_value, q_low, q_high, k0_root, k0, alpha, margin):
    """From `start`, follow best children while the node is expanded, stopping at a node
    that `should_widen` (or that may widen and has no open child). Each chosen child
    takes a virtual loss and is written to `path_out`. A node's first-play value (for
    children never scored) is its own Q, or 0.5 when it has none.

    Returns `(count, outcome)`: the children written and `REACHED_LEAF`, `DEAD_END`,
    `WIDEN` (widen the last node written, or `start` when none), `REVISIT` (that node
    has no open child, its children do not fall short of its value, and it is not due
    another sample at the progressive-widening pace, `ceil(k * N ** alpha)` with k its
    `widen_k` once saturated, else `k0` / `k0_root`: it is visited as it stands, like a
    terminal) or `PATH_FULL`."""
    node, count = start, 0
    while expanded[node]:
        if count == path_out.shape[0]:
            return count, PATH_FULL
        if should_widen(node, parent, first_child, next_sibling, can_widen, samples, visits,
                        value_sum, value_max, critic_value, widen_k, max_backup, k0_root, k0, alpha, margin):
            return count, WIDEN
        fpu = node_q(visits, value_sum, value_max, critic_value, node, max_backup)
        if math.isnan(fpu):
            fpu = 0.5
        child = best_child(node, first_child, next_sibling, closed, visits, virtual_loss,
                           value_sum, value_max, critic_value, prior, c, rule, max_backup,
                           vl_value, fpu, q_low, q_high)
        if child < 0:
            if not can_widen[node]:
                return count, DEAD_END
            # nothing open below: widen at the progressive pace (its own when saturated),
            # else visit it as it stands (with alpha 0 the pace never grows: widen)
            k = np.float64(widen_k[node])
            if math.isnan(k):
                k = k0_root if parent[node] < 0 else k0
            if alpha > 0 and samples[node] >= allowed_samples(k, visits[node], alpha):
                return count, REVISIT
            return count, WIDEN
        virtual_loss[child] += 1
        path_out[count] = child
        count += 1
        node = child
    return count, REACHED_LEAF


@njit(cache=True, nogil=True)
def backup(path, value, release, visits, value_sum, value_max, virtual_loss):
    """One visit and `value` on every node of `path`; with `release`, also take back the
    virtual loss each node carried for this simulation."""
    for i in range(path.shape[0]):
        node = path[i]
        visits[node] += 1
        value_sum[node] += value
        if math.isnan(value_max[node]) or value > value_max[node]:
            value_max[node] = value
        if release:
            virtual_loss[node] -= 1


@njit(cache=True, nogil=True)
def close_upward(node, parent, first_child, next_sibling, closed, can_widen):
    """Close `node`, then each ancestor whose children are now all closed, stopping at
    the first ancestor that may still widen."""
    closed[node] = True
    node = parent[node]
    while node >= 0:
        if can_widen[node]:
            return
        child = first_child[node]
        while child >= 0:
            if not closed[child]:
                return
            child = next_sibling[child]
        closed[node] = True
        node = parent[node]
