"""Keys and values of scored token prefixes, kept segment by segment.

A PRM scores a state as prompt + step 1 + ... + step k. The states of one search share
their prompt, and a child shares every step of its parent, so most of a state's tokens
were already run when its parent (or a sibling) was scored. `SegmentCache` keeps, per
segment (the prompt, then each step with its separator), the keys and values its tokens
produced and the value logit at its end, under a digest of all the tokens up to the
segment's end; a state is then scored by running only the segments after its longest
cached chain. The cache is bounded in bytes and forgets the least recently used segment.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass
class Segment:
    """One segment's keys and values, [layers, 2, kv_heads, tokens, head_dim] float32, and
    the value logit at its last token (None for the prompt: no step ends there)."""

    kv: np.ndarray
    logit: Optional[float]

    @property
    def tokens(self) -> int:
        return int(self.kv.shape[3])


def segment_keys(ids: Sequence[int], ends: Sequence[int]) -> list[bytes]:
    """For each segment end, a digest of `ids[:end]` (computed incrementally)."""
    digest = hashlib.blake2b(digest_size=16)
    keys, start = [], 0
    for end in ends:
        digest.update(np.asarray(ids[start:end], dtype=np.int64).tobytes())
        keys.append(digest.copy().digest())
        start = end
    return keys


class SegmentCache:
    """An LRU of `Segment`s holding at most `max_bytes` of keys and values (0: keeps none)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._segments: OrderedDict[bytes, Segment] = OrderedDict()

    def __len__(self) -> int:
        return len(self._segments)

    def __contains__(self, key: bytes) -> bool:
        return key in self._segments

    def chain(self, keys: Sequence[bytes], limit: int) -> list[Segment]:
        """The cached segments for `keys[0]`, `keys[1]`, ... up to the first missing one,
        at most `limit` of them (each marked as recently used)."""
        found: list[Segment] = []
        for key in keys[:limit]:
            segment = self._segments.get(key)
            if segment is None:
                break
            self._segments.move_to_end(key)
            found.append(segment)
        return found

    def put(self, key: bytes, segment: Segment) -> None:
        if self.max_bytes <= 0 or segment.kv.nbytes > self.max_bytes:
            return
        old = self._segments.pop(key, None)
        if old is not None:
            self.bytes -= old.kv.nbytes
        self._segments[key] = segment
        self.bytes += segment.kv.nbytes
        while self.bytes > self.max_bytes:
            _, dropped = self._segments.popitem(last=False)
            self.bytes -= dropped.kv.nbytes
