"""Node-store speed: simulations (select -> expand -> back up) per second with a zero-cost
policy and critic, treesearch's struct-of-arrays `Tree` vs a plain object-per-node tree
written here as the baseline; and bytes per node.

    python benchmarks/tree_core.py [--simulations 20000] [--branching 4] [--depth 8] [--repeats 3] [--quick]

Both sides run the same PUCT selection (unvisited children valued by their critic
value), the same synthetic expansion (`branching` children with fixed priors and
pseudo-random values) and the same mean backup, to a depth limit.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from treesearch import kernels
from treesearch.search.selection import Descent
from treesearch.tree import Tree


def values_for(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(count)


def run_store(simulations: int, branching: int, depth: int) -> tuple[float, Tree]:
    """The engine's own path: `Descent` (compiled selection with virtual loss), then
    `Tree.add_children`, `Tree.close` and `Tree.backup` (compiled), as MCTS* runs them."""
    tree = Tree(capacity=1024)
    descent = Descent(c=1.0)
    rng_values = values_for(simulations * branching + branching, 0)
    used = 0
    priors = np.full(branching, 1.0 / branching)
    texts = [""] * branching
    start = time.perf_counter()
    for _ in range(simulations):
        tree.virtual_loss[0] += 1
        chosen, outcome = descent.run(tree, 0)
        path = [0, *chosen]
        node = path[-1]
        if outcome != kernels.REACHED_LEAF or tree.closed[node]:
            tree.virtual_loss[path] -= 1
            continue
        if tree.depth[node] >= depth:
            tree.virtual_loss[path] -= 1
            tree.close(node)
            continue
        kids = tree.add_children(node, texts, priors=priors)
        values = rng_values[used : used + branching]
        tree.critic_value[kids[0] : kids[0] + branching] = values
        used += branching
        best = int(kids[0]) + int(values.argmax())
        tree.virtual_loss[best] += 1
        path.append(best)
        tree.backup(path, float(values.max()), release_virtual_loss=True)
    return simulations / (time.perf_counter() - start), tree


class Node:
    """The baseline: one Python object per node."""

    __slots__ = ("parent", "children", "visits", "value_sum", "prior", "critic", "depth", "closed")

    def __init__(self, parent, prior, critic, depth):
        self.parent, self.prior, self.critic, self.depth = parent, prior, critic, depth
        self.children, self.visits, self.value_sum, self.closed = [], 0, 0.0, False

    def q(self, fpu):
        if self.visits:
            return self.value_sum / self.visits
        return self.critic if self.critic is not None else fpu


def run_objects(simulations: int, branching: int, depth: int) -> tuple[float, Node]:
    root = Node(None, 1.0, None, 0)
    rng_values = values_for(simulations * branching + branching, 0).tolist()
    used = 0
    start = time.perf_counter()
    for _ in range(simulations):
        node, path = root, [root]
        while node.children:
            sqrt_n = math.sqrt(node.visits)
            fpu = node.q(0.5)
            best, best_score = None, -math.inf
            for child in node.children:
                if child.closed:
                    continue
                score = child.q(fpu) + child.prior * sqrt_n / (1 + child.visits)
                if score > best_score:
                    best, best_score = child, score
            if best is None:
                break
            node = best
            path.append(node)
        if node.children or node.closed:
            continue
        if node.depth >= depth:
            node.closed = True
            parent = node.parent
            while parent is not None and all(c.closed for c in parent.children):
                parent.closed = True
                parent = parent.parent
            continue
        node.children = [
            Node(node, 1.0 / branching, rng_values[used + j], node.depth + 1) for j in range(branching)
        ]
        used += branching
        best = max(node.children, key=lambda c: c.critic)
        path.append(best)
        for n in path:
            n.visits += 1
            n.value_sum += best.critic
    return simulations / (time.perf_counter() - start), root


def tree_bytes(tree: Tree) -> int:
    """Bytes of the node store's arrays (live part) plus its text and answer lists."""
    arrays = sum(tree.column(name).nbytes for name in ("parent", "depth", "first_child", "num_children",
                 "expanded", "visits", "value_sum", "value_max", "prior", "critic_value", "rollout_value",
                 "virtual_loss", "terminal", "closed", "reward", "num_tokens", "logprob", "finish_reason", "duplicates"))
    lists = sys.getsizeof(tree.text) + sys.getsizeof(tree.answer)
    return arrays + lists


def object_bytes(root: Node) -> int:
    total, stack = 0, [root]
    while stack:
        n = stack.pop()
        total += sys.getsizeof(n) + sys.getsizeof(n.children) + 3 * 24  # the node, its list, its floats
        stack.extend(n.children)
    return total


def count(root: Node) -> int:
    total, stack = 0, [root]
    while stack:
        n = stack.pop()
        total += 1
        stack.extend(n.children)
    return total


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulations", type=int, default=20000)
    parser.add_argument("--branching", type=int, default=4)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/tree_core.json")
    args = parser.parse_args(argv)
    sims = 2000 if args.quick else args.simulations
    repeats = 1 if args.quick else args.repeats
    ours, base = [], []
    for _ in range(repeats):  # alternate, so both sides see the same machine load
        rate, tree = run_store(sims, args.branching, args.depth)
        ours.append(rate)
        rate, root = run_objects(sims, args.branching, args.depth)
        base.append(rate)
    report = {
        "simulations": sims,
        "branching": args.branching,
        "depth": args.depth,
        "store_sims_per_s": statistics.median(ours),
        "objects_sims_per_s": statistics.median(base),
        "ratio": statistics.median(ours) / statistics.median(base),
        "store_nodes": len(tree),
        "store_bytes_per_node": tree_bytes(tree) / len(tree),
        "objects_nodes": count(root),
        "objects_bytes_per_node": object_bytes(root) / count(root),
    }
    print(json.dumps(report, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
