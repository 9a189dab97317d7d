"""The per-segment key/value cache a PRM scores with: chains, LRU, byte bound."""

import numpy as np

from critics.kv_segments import Segment, SegmentCache, segment_keys


def _segment(tokens: int, logit=None) -> Segment:
    return Segment(np.zeros((2, 2, 1, tokens, 4), dtype=np.float32), logit)


def test_keys_digest_every_token_up_to_each_end():
    a = segment_keys([1, 2, 3, 4, 5], [2, 4, 5])
    b = segment_keys([1, 2, 3, 4, 9], [2, 4, 5])
    assert a[:2] == b[:2] and a[2] != b[2]
    assert segment_keys([1, 2, 3, 4], [3, 4])[1] == a[1]  # the same tokens, split elsewhere: the same prefix
    assert len(set(a)) == 3


def test_a_chain_stops_at_the_first_missing_segment_and_at_the_limit():
    keys = segment_keys(list(range(10)), [4, 6, 8, 10])
    cache = SegmentCache(1 << 20)
    for key, tokens in zip([keys[0], keys[1], keys[3]], [4, 2, 2]):
        cache.put(key, _segment(tokens))
    assert [s.tokens for s in cache.chain(keys, 4)] == [4, 2]
    assert [s.tokens for s in cache.chain(keys, 1)] == [4]
    assert cache.chain(segment_keys([9] + list(range(1, 10)), [4, 6]), 2) == []


def test_the_least_recently_used_segment_goes_first_and_the_bytes_stay_bounded():
    one = _segment(1).kv.nbytes
    cache = SegmentCache(3 * one)
    keys = [bytes([i]) for i in range(4)]
    for key in keys[:3]:
        cache.put(key, _segment(1))
    cache.chain(keys[:1], 1)  # key 0 used: key 1 is now the oldest
    cache.put(keys[3], _segment(1))
    assert keys[1] not in cache and all(k in cache for k in (keys[0], keys[2], keys[3]))
    assert cache.bytes == 3 * one
    cache.put(b"big", _segment(4))  # larger than the whole cache: not kept, nothing evicted
    assert b"big" not in cache and len(cache) == 3
    cache.put(keys[0], _segment(1, 0.5))  # replaced, not counted twice
    assert cache.bytes == 3 * one and cache.chain(keys[:1], 1)[0].logit == 0.5
    assert len(SegmentCache(0).chain(keys, 4)) == 0
