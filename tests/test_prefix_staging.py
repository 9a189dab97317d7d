"""Staging requests that share a prompt prefix: the first computes it, the rest wait."""

from __future__ import annotations

import pytest

from treesearch.policy.prefix_staging import PrefixStager

SHOTS = list(range(100, 164))  # two whole blocks of 32 shared by every prompt


def prompt(question: int, length: int = 40) -> list[int]:
    return SHOTS + [question] * length


def test_requests_behind_one_new_prefix_wait_for_the_first():
    stager = PrefixStager(32)
    a, b, c = prompt(1), prompt(2), prompt(3)
    assert stager.ready(a)
    stager.started("a", a)
    assert not stager.ready(b) and not stager.ready(c)  # both need the shots a is computing
    assert stager.held == 2 and stager.computing
    stager.prefilled("a")
    assert not stager.computing
    assert stager.ready(b)
    stager.started("b", b)
    assert stager.ready(c)  # c's first missing block is its own question, which nobody computes


def test_samples_of_one_prompt_wait_for_the_first_sample():
    stager = PrefixStager(32)
    p = prompt(7)
    assert stager.ready(p)
    stager.started(0, p)
    assert [stager.ready(p) for _ in range(3)] == [False] * 3
    stager.prefilled(0)
    assert all(stager.ready(p) for _ in range(3))


def test_short_prompts_and_unrelated_prompts_never_wait():
    stager = PrefixStager(32)
    stager.started("long", prompt(1))
    assert stager.ready([5] * 32)  # no whole block before its last token
    assert stager.ready(list(range(500, 600)))  # shares nothing
    stager.started("other", list(range(500, 600)))
    assert not stager.ready(list(range(500, 600)) + [1])


def test_a_request_that_ends_without_a_token_releases_its_blocks():
    stager = PrefixStager(32)
    stager.started("failed", prompt(1))
    stager.prefilled("failed")  # the engine reports an ended request the same way
    assert stager.ready(prompt(2)) and not stager.computing
    stager.prefilled("never-started")  # unknown keys are ignored


def test_computed_blocks_are_forgotten_least_recently_used_first():
    stager = PrefixStager(32, capacity=2)
    stager.started("a", prompt(1))
    stager.prefilled("a")
    assert stager._first_missing(stager.blocks(prompt(1))) == 0  # of its 3 blocks, the first was pushed out
    stager.started("c", prompt(3))  # so c computes the shots again
    assert not stager.ready(prompt(4))
    stager.prefilled("c")
    assert stager.ready(prompt(4))


def test_bad_block_size():
    with pytest.raises(ValueError, match="block_tokens must be >= 1"):
        PrefixStager(0)
