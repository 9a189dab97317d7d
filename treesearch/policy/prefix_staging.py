"""Staging requests so that a prompt prefix they share is computed once.

A prefix cache serves blocks that an earlier request already computed, but requests that
arrive together (every problem of a job behind the same few-shot examples, the k samples
of one state) all start before any has computed its prompt, so each prefills the shared
prefix again. `PrefixStager` holds a request back while another request that is being
prefilled covers the first of its blocks not yet computed, and lets it in once that
prefill is done: the shared part is then read from the cache. Outputs do not change;
only the order in which requests enter the engine does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Sequence


class PrefixStager:
    """Which requests may enter the engine now.

    `ready(prompt)`: whether a request of `prompt` may be added (False: hold it and ask
    again after the next engine step); `started(key, prompt)` once it is added;
    `prefilled(key)` once its prompt has been computed (its first token came) or it
    ended. Blocks are `block_tokens` long (the engine's KV-cache block); at most
    `capacity` computed blocks are remembered, least recently used first out.
    """

    def __init__(self, block_tokens: int, capacity: int = 1 << 16):
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        self.block_tokens = block_tokens
        self.capacity = capacity
        self._computed: "OrderedDict[int, None]" = OrderedDict()
        self._computing: dict[int, Hashable] = {}  # block -> the request computing it
        self._by_request: dict[Hashable, list[int]] = {}
        self.held = 0  # requests held back at least once (a counter, for benchmarks)

    def blocks(self, prompt: Sequence[int]) -> list[int]:
        """Keys of the prompt's whole blocks (the last token is always computed anew)."""
        ends = range(self.block_tokens, len(prompt), self.block_tokens)
        return [hash(tuple(prompt[:end])) for end in ends]

    def _first_missing(self, blocks: list[int]) -> int:
        for i, key in enumerate(blocks):
            if key not in self._computed:
                return i
            self._computed.move_to_end(key)
        return len(blocks)

    def ready(self, prompt: Sequence[int]) -> bool:
        blocks = self.blocks(prompt)
        i = self._first_missing(blocks)
        if i < len(blocks) and blocks[i] in self._computing:
            self.held += 1
            return False
        return True

    def started(self, key: Hashable, prompt: Sequence[int]) -> None:
        blocks = self.blocks(prompt)
        mine = [b for b in blocks[self._first_missing(blocks):] if b not in self._computing]
        for b in mine:
            self._computing[b] = key
        if mine:
            self._by_request[key] = mine

    def prefilled(self, key: Hashable) -> None:
        for b in self._by_request.pop(key, ()):
            self._computing.pop(b, None)
            self._computed[b] = None
        while len(self._computed) > self.capacity:
            self._computed.popitem(last=False)

    @property
    def computing(self) -> bool:
        """Whether some request's prefill is still awaited."""
        return bool(self._by_request)
