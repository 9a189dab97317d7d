"""The node store: one search tree as a struct of growable numpy arrays.

Node 0 is the root (the prompt, no step text). The children of a node arrive in batches
(its first expansion, then any widenings); each batch occupies a contiguous id range,
and `next_sibling` links a node's children from `first_child` through every batch
(within a batch it is simply id + 1). Appends are amortised O(1) (capacities double).

Per-node columns (shape `[num_nodes]`):

==============  ========  ========================================================
column          dtype     meaning
==============  ========  ========================================================
parent          int32     parent id, -1 for the root
depth           int32     number of steps from the root
first_child     int32     id of the first child, -1 when none
next_sibling    int32     id of the next child of the same parent, -1 for the last
num_children    int32     number of children
samples         int32     steps sampled at this node over all its expansions
                          (duplicates and discarded empty steps included)
can_widen       bool      the search may add children later (MCTS* widening): the
                          node stays open while its current children are all closed
widen_k         float32   a saturated node's progressive-widening coefficient: it may
                          have drawn ceil(widen_k * N ** alpha) samples after N
                          visits (NaN while it widens by its own rule)
expanded        bool      the policy was asked for this node's children
visits          int32     completed simulations through the node
value_sum       float64   sum of values backed up through the node
value_max       float64   largest value backed up through the node (NaN if none)
prior           float32   P(s, a) used by PUCT, normalised over siblings
critic_value    float32   the critic's value of the state (NaN if not scored)
rollout_value   float32   value of a roll-forward / rollout from it (NaN if none)
virtual_loss    int32     simulations in flight through the node
terminal        bool      the step ends the solution
closed          bool      the subtree can yield nothing new (terminal, dead end,
                          depth limit, or all children closed and no widening left)
reward          float32   outcome when graded against a gold answer (NaN if not)
num_tokens      int32     generated tokens of the step
logprob         float32   summed log-probability of the step's tokens
finish_reason   int8      index into ``FINISH_REASONS``; -1 for the root
duplicates      int32     identical sibling steps merged into this one
text            str       the step text (list)
answer          str|None  extracted final answer of terminal nodes (list)
==============  ========  ========================================================
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from treesearch import kernels
from treesearch.types import FINISH_REASONS

# 2 added next_sibling, samples, can_widen; 3 added widen_k. Older tables still load.
FORMAT_VERSION = 3

# The per-node columns, read by the tree's growth, Parquet I/O and `column()`:
# name -> (dtype, fill value for a new node). `Tree` declares each one (a test keeps them equal).
COLUMNS: dict[str, tuple[Any, Any]] = {
    "parent": (np.int32, -1),
    "depth": (np.int32, 0),
    "first_child": (np.int32, -1),
    "next_sibling": (np.int32, -1),
    "num_children": (np.int32, 0),
    "samples": (np.int32, 0),
    "can_widen": (np.bool_, False),
    "widen_k": (np.float32, np.nan),
    "expanded": (np.bool_, False),
    "visits": (np.int32, 0),
    "value_sum": (np.float64, 0.0),
    "value_max": (np.float64, np.nan),
    "prior": (np.float32, 1.0),
    "critic_value": (np.float32, np.nan),
    "rollout_value": (np.float32, np.nan),
    "virtual_loss": (np.int32, 0),
    "terminal": (np.bool_, False),
    "closed": (np.bool_, False),
    "reward": (np.float32, np.nan),
    "num_tokens": (np.int32, 0),
    "logprob": (np.float32, 0.0),
    "finish_reason": (np.int8, -1),
    "duplicates": (np.int32, 0),
}


class Tree:
    """A search tree for one problem. Array columns are exposed as attributes
    (views of the first `len(tree)` entries are returned by `column(name)`)."""

    # the columns of COLUMNS (arrays of `capacity` entries; the first len(tree) are nodes)
    parent: np.ndarray  # int32
    depth: np.ndarray  # int32
    first_child: np.ndarray  # int32
    next_sibling: np.ndarray  # int32
    num_children: np.ndarray  # int32
    samples: np.ndarray  # int32
    can_widen: np.ndarray  # bool
    widen_k: np.ndarray  # float32
    expanded: np.ndarray  # bool
    visits: np.ndarray  # int32
    value_sum: np.ndarray  # float64
    value_max: np.ndarray  # float64
    prior: np.ndarray  # float32
    critic_value: np.ndarray  # float32
    rollout_value: np.ndarray  # float32
    virtual_loss: np.ndarray  # int32
    terminal: np.ndarray  # bool
    closed: np.ndarray  # bool
    reward: np.ndarray  # float32
    num_tokens: np.ndarray  # int32
    logprob: np.ndarray  # float32
    finish_reason: np.ndarray  # int8
    duplicates: np.ndarray  # int32
    text: list[str]
    answer: list[Optional[str]]

    def __init__(self, problem_id: str = "", prompt: Any = "", capacity: int = 64):
        self.problem_id = problem_id
        self.prompt = prompt
        self.meta: dict[str, Any] = {}
        self._size = 0
        capacity = max(int(capacity), 1)
        for name, (dtype, fill) in COLUMNS.items():
            setattr(self, name, np.full(capacity, fill, dtype=dtype))
        self.text: list[str] = []
        self.answer: list[Optional[str]] = []
        self._append(1)
        self.text.append("")
        self.answer.append(None)

    # ------------------------------------------------------------------ growth
    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        return len(self.parent)

    def _append(self, count: int) -> np.ndarray:
        start, end = self._size, self._size + count
        if end > self.capacity:
            new_capacity = max(end, 2 * self.capacity)
            for name, (dtype, fill) in COLUMNS.items():
                old = getattr(self, name)
                grown = np.full(new_capacity, fill, dtype=dtype)
                grown[: self._size] = old[: self._size]
                setattr(self, name, grown)
        self._size = end
        return np.arange(start, end, dtype=np.int32)

    def add_children(
        self,
        parent: int,
        texts: Sequence[str],
        *,
        priors: Optional[Sequence[float]] = None,
        num_tokens: Optional[Sequence[int]] = None,
        logprobs: Optional[Sequence[float]] = None,
        finish_reasons: Optional[Sequence[str]] = None,
        terminal: Optional[Sequence[bool]] = None,
        answers: Optional[Sequence[Optional[str]]] = None,
        duplicates: Optional[Sequence[int]] = None,
        extend: bool = False,
    ) -> np.ndarray:
        """Append a batch of children of `parent` and return their ids.

        The first batch expands the node; a later batch (a widening) needs `extend=True`
        and is linked after the existing children. `priors` are those of the new
        children only: re-normalise the siblings with `set_priors` after a widening.
        """
        if not 0 <= parent < self._size:
            raise IndexError(f"node {parent} does not exist (tree has {self._size} nodes)")
        if self.expanded[parent] and not extend:
            raise ValueError(f"node {parent} is already expanded (pass extend=True to widen it)")
        count = len(texts)
        last = self.last_child(parent)
        ids = self._append(count)
        self.expanded[parent] = True
        self.num_children[parent] += count
        if count == 0:
            return ids
        new = slice(int(ids[0]), int(ids[0]) + count)  # a batch is contiguous: slices, not fancy indexing
        if last < 0:
            self.first_child[parent] = new.start
        else:
            self.next_sibling[last] = new.start
        self.next_sibling[new.start : new.stop - 1] = np.arange(new.start + 1, new.stop, dtype=np.int32)
        self.parent[new] = parent
        self.depth[new] = self.depth[parent] + 1
        self.prior[new] = 1.0 / count if priors is None else priors
        if num_tokens is not None:
            self.num_tokens[new] = num_tokens
        if logprobs is not None:
            self.logprob[new] = logprobs
        if finish_reasons is not None:
            self.finish_reason[new] = [FINISH_REASONS.index(r) for r in finish_reasons]
        else:
            self.finish_reason[new] = 0
        if terminal is not None:
            self.terminal[new] = terminal
        if duplicates is not None:
            self.duplicates[new] = duplicates
        self.text.extend(texts)
        self.answer.extend(answers if answers is not None else [None] * count)
        return ids

    # ---------------------------------------------------------------- queries
    def column(self, name: str) -> np.ndarray:
        """The live values of one array column (a view)."""
        if name not in COLUMNS:
            raise KeyError(f"unknown column {name!r}; columns: {list(COLUMNS)}")
        return getattr(self, name)[: self._size]

    def children(self, node: int) -> np.ndarray:
        """Ids of `node`'s children, in the order they were added."""
        start = int(self.first_child[node])
        if start < 0:
            return np.empty(0, dtype=np.int32)
        return kernels.sibling_list(start, int(self.num_children[node]), self.next_sibling)

    def last_child(self, node: int) -> int:
        """Id of `node`'s last child, or -1 when it has none."""
        kids = self.children(node)
        return int(kids[-1]) if kids.size else -1

    def set_priors(self, node: int, priors: Sequence[float]) -> None:
        """Replace the priors of all of `node`'s children (in `children` order)."""
        self.prior[self.children(node)] = priors

    def path(self, node: int) -> list[int]:
        """Node ids from the root to `node`, inclusive."""
        out = []
        while node >= 0:
            out.append(int(node))
            node = self.parent[node]
        return out[::-1]

    def steps(self, node: int) -> tuple[str, ...]:
        """Step texts from the root's first step down to `node`."""
        return tuple(self.text[i] for i in self.path(node)[1:])

    def value(self, nodes: Any, backup: str = "mean") -> np.ndarray | float:
        """Q of node(s): the backed-up value (mean or max) where visited, else the
        critic's value of the node (NaN when it was never scored)."""
        nodes_arr = np.asarray(nodes)
        visits = self.visits[nodes_arr]
        if backup == "max":
            backed = self.value_max[nodes_arr]
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                backed = self.value_sum[nodes_arr] / np.maximum(visits, 1)
        q = np.where(visits > 0, backed, self.critic_value[nodes_arr].astype(np.float64))
        return float(q) if q.ndim == 0 else q

    def terminal_nodes(self) -> np.ndarray:
        return np.flatnonzero(self.column("terminal")).astype(np.int32)

    def leaves(self) -> np.ndarray:
        return np.flatnonzero(~self.column("expanded")).astype(np.int32)

    # --------------------------------------------------------------- updates
    def close(self, node: int) -> None:
        """Mark `node` closed and close ancestors whose children are all closed, up to the
        first one that may still widen (`can_widen`)."""
        kernels.close_upward(int(node), self.parent, self.first_child, self.next_sibling, self.closed, self.can_widen)

    def stop_widening(self, node: int) -> None:
        """`node` gets no more children; close it if its children are all closed."""
        self.can_widen[node] = False
        kids = self.children(node)
        if self.expanded[node] and (kids.size == 0 or self.closed[kids].all()):
            self.close(node)

    def backup(self, path: Sequence[int], value: float, *, release_virtual_loss: bool = False) -> None:
        """Add one visit and `value` to every node on `path`; with `release_virtual_loss`,
        also remove the virtual loss the path's simulation put on each node."""
        kernels.backup(
            np.asarray(path, dtype=np.int64), float(value), release_virtual_loss,
            self.visits, self.value_sum, self.value_max, self.virtual_loss,
        )

    # ----------------------------------------------------------- persistence
    def to_arrow(self):
        """The node table as a `pyarrow.Table` (tree metadata in the schema)."""
        import pyarrow as pa

        arrays = {name: pa.array(self.column(name)) for name in COLUMNS}
        arrays["text"] = pa.array(self.text, type=pa.string())
        arrays["answer"] = pa.array(self.answer, type=pa.string())
        table = pa.table(arrays)
        meta = {
            "treesearch.format": str(FORMAT_VERSION),
            "treesearch.problem_id": self.problem_id,
            "treesearch.prompt": json.dumps(self.prompt),
            "treesearch.meta": json.dumps(self.meta),
        }
        return table.replace_schema_metadata(meta)

    @classmethod
    def from_arrow(cls, table) -> "Tree":
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        version = meta.get("treesearch.format")
        if version not in ("1", "2", str(FORMAT_VERSION)):
            raise ValueError(f"not a treesearch tree table (format {version!r})")
        tree = cls.__new__(cls)
        tree.problem_id = meta["treesearch.problem_id"]
        tree.prompt = json.loads(meta["treesearch.prompt"])
        tree.meta = json.loads(meta["treesearch.meta"])
        tree._size = table.num_rows
        for name, (dtype, fill) in COLUMNS.items():
            if name in table.column_names:
                values = table.column(name).to_numpy(zero_copy_only=False).astype(dtype)
            else:  # a column added after the table's format version: derived below
                values = np.full(table.num_rows, fill, dtype=dtype)
            setattr(tree, name, values.copy())
        if version == "1":  # one batch of children per node: link them, count the samples
            tree._link_single_batches()
        tree.text = table.column("text").to_pylist()
        tree.answer = table.column("answer").to_pylist()
        return tree

    def _link_single_batches(self) -> None:
        """Fill `next_sibling` and `samples` of a version-1 table (children contiguous)."""
        for node in np.flatnonzero(self.num_children[: self._size] > 0):
            start, count = int(self.first_child[node]), int(self.num_children[node])
            self.next_sibling[start : start + count - 1] = np.arange(start + 1, start + count, dtype=np.int32)
            self.samples[node] = count + int(self.duplicates[start : start + count].sum())

    def save(self, path: str | Path) -> Path:
        """Write the tree to a Parquet file (round-trips exactly through `load`)."""
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.to_arrow(), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Tree":
        import pyarrow.parquet as pq

        return cls.from_arrow(pq.read_table(path))

    def to_json(self) -> dict:
        """A nested, JSON-serialisable view for tree viewers."""

        def clean(x: float) -> Optional[float]:
            return None if math.isnan(x) else float(x)

        def node(i: int) -> dict:
            return {
                "id": i,
                "text": self.text[i],
                "visits": int(self.visits[i]),
                "value": clean(float(self.value(i))),
                "prior": float(self.prior[i]),
                "critic_value": clean(float(self.critic_value[i])),
                "rollout_value": clean(float(self.rollout_value[i])),
                "terminal": bool(self.terminal[i]),
                "answer": self.answer[i],
                "reward": clean(float(self.reward[i])),
                "num_tokens": int(self.num_tokens[i]),
                "children": [node(int(c)) for c in self.children(i)],
            }

        return {"problem_id": self.problem_id, "prompt": self.prompt, "meta": self.meta, "root": node(0)}

    def equals(self, other: "Tree") -> bool:
        """Exact equality of every column, text and metadata (NaN equals NaN)."""
        if len(self) != len(other) or self.problem_id != other.problem_id:
            return False
        if self.prompt != other.prompt or self.meta != other.meta:
            return False
        for name in COLUMNS:
            a, b = self.column(name), other.column(name)
            if a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                return False
        return self.text == other.text and self.answer == other.answer

