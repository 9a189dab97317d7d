"""Helpers shared by the policy backends' tests: states of small arithmetic questions, an
independent check of the step-stop rule, and a jolt that makes a random model talk."""

from __future__ import annotations

import asyncio

import torch

from treesearch.types import Problem, State

QUESTIONS = [
    "What is 2 + 3?",
    "Tom has 4 apples and eats one. How many are left?",
    "A train goes 60 miles per hour for 2 hours. How far does it go?",
    "What is 7 times 6?",
    "Sara buys 3 pens at $2 each. How much does she pay?",
    "What is half of 18?",
    "A box holds 12 eggs. How many eggs are in 3 boxes?",
    "What is 100 minus 37?",
]


def make_state(i: int, steps: tuple[str, ...] = ()) -> State:
    q = QUESTIONS[i % len(QUESTIONS)]
    messages = [
        {"role": "system", "content": "Solve step by step, one step per line."},
        {"role": "user", "content": q},
    ]
    return State(problem=Problem(id=str(i), question=q), prompt=messages, steps=steps)


def run(coro):
    return asyncio.run(coro)


def ends_at_first_valid_stop(text: str, stops) -> bool:
    """`text` ends with a stop string, and no stop string ends earlier after some
    non-whitespace text (written out independently of `find_stop`)."""
    if not any(text.endswith(s) for s in stops):
        return False
    for e in range(1, len(text)):
        for s in stops:
            start = e - len(s)
            if start >= 0 and text[start:e] == s and text[:start].strip():
                return False
    return True


def jolt(model, scale: float = 0.3, seed: int = 0):
    """Add seeded noise to the 2-D weights of `model` in place, so that a random tiny
    model's greedy decoding writes varied text (untouched, it repeats one token)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model
