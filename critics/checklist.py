"""STICK checklists (self-TICK): the model writes a problem's checklist of yes/no questions
once, then a state's value is the mean P("Yes") over its items."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Optional, Sequence

import numpy as np

from critics.lm import ModelArg, encode_text, scorer_for, single_token, yes_probabilities
from critics.registry import register_critic
from treesearch.prompting import render_prompt
from treesearch.types import Problem, SamplingParams, State

WRITE_PROMPT = (
    "Problem: {question}\n\n"
    "Write a checklist of {items} short yes/no questions that a correct solution to this problem "
    "must pass (which numbers to use, which operations, what is asked). One question per line, "
    "each ending with '?'."
)
JUDGE_PROMPT = (
    "Problem: {question}\n\nSolution so far:\n{solution}\n\n"
    "Checklist question: {item}\nAnswer Yes or No."
)
FALLBACK_ITEMS = (
    "Does the solution use the numbers the problem gives?",
    "Is every calculation in the solution correct?",
    "Does the solution work toward what the question asks?",
)
_ITEM = re.compile(r"^\s*(?:[-*•]|\(?\d+[.)]|\[ ?\])?\s*(.+?\?)\s*$")


def parse_checklist(text: str, limit: int) -> tuple[str, ...]:
    """The distinct yes/no questions of a written checklist: lines ending with '?', list
    marks ("1.", "-", "[ ]") dropped, at most `limit`."""
    items: list[str] = []
    for line in text.splitlines():
        match = _ITEM.match(line)
        if match and len(match.group(1)) >= 8 and match.group(1) not in items:
            items.append(match.group(1))
        if len(items) == limit:
            break
    return tuple(items)


class ChecklistCritic:
    """Values a state by a checklist the model wrote for its problem (STICK).

    Per problem, once: the checklist writer answers `write_prompt` (formatted with
    `{question}` and `{items}`) greedily, and its lines ending with '?' become the items
    (at most `num_items`; `fallback` when it wrote fewer than `min_items`). A state's value is
    the mean over the items of P(yes) / (P(yes) + P(no)) for `judge_prompt` (formatted with
    `{question}`, `{solution}` and `{item}`), read from the next-token probabilities, all
    items of all states in one batch.

    `model`: a name/folder (loaded through the model cache), a `(model, tokenizer)` pair, or
    the policy's engine when it scores (a `TokenScorer`). The writer is `writer` when given
    (a Policy: its `complete`), else `model` when it is a Policy, else the transformers model
    behind the scorer (greedy `generate`). `checklists` maps problem ids to their items.
    """

    def __init__(
        self,
        model: ModelArg = "smollm2",
        *,
        writer: Any = None,
        num_items: int = 4,
        min_items: int = 2,
        write_prompt: str = WRITE_PROMPT,
        judge_prompt: str = JUDGE_PROMPT,
        fallback: Sequence[str] = FALLBACK_ITEMS,
        max_new_tokens: int = 160,
        yes: str = "Yes",
        no: str = "No",
        device: str = "auto",
        dtype: Any = "auto",
        threads: Optional[int] = None,
        max_batch_size: int = 16,
    ):
        if int(num_items) < 1 or not 1 <= int(min_items) <= int(num_items):
            raise ValueError(f"checklist critic: need 1 <= min_items <= num_items, got min_items={min_items}, "
                             f"num_items={num_items}")
        if not fallback:
            raise ValueError("checklist critic: fallback must hold at least one question")
        self.lm = scorer_for(model, device=device, dtype=dtype, threads=threads, max_batch_size=max_batch_size)
        self.writer = writer if writer is not None else (model if hasattr(model, "complete") else None)
        self.num_items, self.min_items = int(num_items), int(min_items)
        self.write_prompt, self.judge_prompt = write_prompt, judge_prompt
        self.fallback = tuple(fallback)
        self.max_new_tokens = int(max_new_tokens)
        self.yes_id = single_token(self.lm.tokenizer, yes, "checklist answer")
        self.no_id = single_token(self.lm.tokenizer, no, "checklist answer")
        self.checklists: dict[str, tuple[str, ...]] = {}
        self.fell_back: set[str] = set()  # problems whose written checklist was too short
        self._writing: dict[str, asyncio.Task] = {}

    # -- writing
    def write_messages(self, problem: Problem) -> list[dict]:
        return [{"role": "user", "content": self.write_prompt.format(question=problem.question, items=self.num_items)}]

    async def _write(self, problem: Problem) -> str:
        messages = self.write_messages(problem)
        if self.writer is not None:
            params = SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens, stop=())
            (steps,) = await self.writer.complete([State(problem=problem, prompt=messages)], params)
            return "".join(step.text for step in steps)
        if not hasattr(self.lm, "model") or not hasattr(self.lm, "run"):
            raise ValueError("checklist critic: its scorer cannot generate; pass a policy as `writer`")
        ids = encode_text(self.lm.tokenizer, render_prompt(self.lm.tokenizer, messages))

        def generate(batch: list) -> list:
            import torch

            prompt = torch.tensor([batch[0]], device=self.lm.device)
            pad = self.lm.tokenizer.pad_token_id
            out = self.lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                         max_new_tokens=self.max_new_tokens,
                                         pad_token_id=pad if pad is not None else self.lm.tokenizer.eos_token_id)
            return [self.lm.tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)]

        (text,) = await self.lm.run(generate, [ids])
        return text

    async def checklist(self, problem: Problem) -> tuple[str, ...]:
        """The problem's items, written on first use (concurrent callers share one writing)."""
        if problem.id in self.checklists:
            return self.checklists[problem.id]
        if problem.id not in self._writing:
            self._writing[problem.id] = asyncio.ensure_future(self._write(problem))
        try:
            text = await self._writing[problem.id]
        finally:
            self._writing.pop(problem.id, None)
        if problem.id not in self.checklists:
            items = parse_checklist(text, self.num_items)
            if len(items) < self.min_items:
                items = self.fallback[: self.num_items]
                self.fell_back.add(problem.id)
            self.checklists[problem.id] = items
        return self.checklists[problem.id]

    # -- judging
    def judge_text(self, state: State, item: str) -> str:
        content = self.judge_prompt.format(question=state.problem.question, solution=state.solution.strip(), item=item)
        return render_prompt(self.lm.tokenizer, [{"role": "user", "content": content}])

    async def score(self, states: Sequence[State]) -> np.ndarray:
        states = list(states)
        problems = {s.problem.id: s.problem for s in states}
        lists = dict(zip(problems, await asyncio.gather(*(self.checklist(p) for p in problems.values()))))
        sequences, owners = [], []
        for i, s in enumerate(states):
            for item in lists[s.problem.id]:
                sequences.append(encode_text(self.lm.tokenizer, self.judge_text(s, item)))
                owners.append(i)
        yes = await yes_probabilities(self.lm, sequences, self.yes_id, self.no_id)
        counts = np.bincount(owners, minlength=len(states))
        return np.bincount(owners, weights=yes, minlength=len(states)) / np.maximum(counts, 1)


register_critic("checklist", ChecklistCritic)
