"""SELF-GUIDE: the policy writes new problems of a task from a few seed examples, and
rules filter them; a label-free round (majority-vote labels) then trains on them, so the
loop needs no question set of its own.

`synthesize(policy, seeds, count)` asks the policy for new problems (each request shows
`shots` seed questions, drawn per request), keeps those that pass `keep_problem`'s rules
(length, a question at the end, at least `min_numbers` numbers, no stated answer, not a
copy of a seed or of an earlier one) and returns them as rows `{id, input}` (MAWPS's
field names: `task=mawps task.path=FILE` reads them, with no gold answers).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from treesearch.types import Problem, SamplingParams, State

WRITE_INSTRUCTION = (
    "Write one new math word problem like the examples: a short story with numbers, "
    "ending with a question. Write only the problem, not its solution."
)
ASK = "Write a new problem."
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ANSWER_WORDS = re.compile(r"\b(answer|solution|therefore)\b|=", re.IGNORECASE)


def normalized(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def keep_problem(text: str, seen: set[str], *, min_chars: int = 30, max_chars: int = 400,
                 min_numbers: int = 2) -> Optional[str]:
    """Why `text` is rejected ("length", "no question", "numbers", "answer", "duplicate"),
    or None when it is kept (and then recorded in `seen`)."""
    if not min_chars <= len(text) <= max_chars:
        return "length"
    if not text.rstrip().endswith("?"):
        return "no question"
    if len(_NUMBER.findall(text)) < min_numbers:
        return "numbers"
    if _ANSWER_WORDS.search(text):
        return "answer"
    key = normalized(text)
    if key in seen:
        return "duplicate"
    seen.add(key)
    return None


def _first_problem(text: str) -> str:
    """The problem the model wrote: its first paragraph, cut after the first question mark
    that ends a sentence."""
    paragraph = text.strip().split("\n\n")[0].strip()
    cut = paragraph.find("?")
    return paragraph[: cut + 1] if cut >= 0 else paragraph


async def asynthesize(policy: Any, seeds: Sequence[Problem], count: int, *, shots: int = 3, attempts: Optional[int] = None,
                      temperature: float = 1.0, max_new_tokens: int = 96, seed: int = 0,
                      rules: Optional[dict] = None) -> tuple[list[dict], dict]:
    """New problems (rows `{id, input}`, at most `count`) and a report of what the rules
    rejected; `attempts` requests (default 3 x `count`) go to the policy at once."""
    if count < 1 or shots < 1 or not seeds:
        raise ValueError(f"synthesize: need count >= 1, shots >= 1 and seed problems, got count={count}, "
                         f"shots={shots}, {len(seeds)} seeds")
    rng = random.Random(seed)
    attempts = attempts or 3 * count
    states, params = [], []
    for k in range(attempts):
        messages = [{"role": "system", "content": WRITE_INSTRUCTION}]
        for example in rng.sample(list(seeds), min(shots, len(seeds))):
            messages += [{"role": "user", "content": ASK}, {"role": "assistant", "content": example.question}]
        messages.append({"role": "user", "content": ASK})
        states.append(State(problem=Problem(id=f"synthesize-{k}", question=ASK), prompt=messages))
        params.append(SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, stop=(), seed=seed * 100_003 + k))
    written = await policy.complete(states, params)
    seen = {normalized(p.question) for p in seeds}
    rows, rejected, surplus = [], {}, 0
    for steps in written:
        text = _first_problem("".join(step.text for step in steps))
        why = keep_problem(text, seen, **(rules or {}))
        if why is not None:
            rejected[why] = rejected.get(why, 0) + 1
            continue
        if len(rows) < count:
            rows.append({"id": f"synth-{seed}-{len(rows)}", "input": text})
        else:
            surplus += 1  # passed the rules after `count` were kept
    report = {"attempts": attempts, "kept": len(rows), "surplus": surplus, "rejected": rejected, "seeds": len(seeds), "shots": shots,
              "temperature": temperature}
    return rows, report


def synthesize(policy: Any, seeds: Sequence[Problem], count: int, **options: Any) -> tuple[list[dict], dict]:
    """`asynthesize` from synchronous code."""
    return asyncio.run(asynthesize(policy, seeds, count, **options))


def report_path(out: Union[str, Path]) -> Path:
    """Where the report of problems written to `out` goes: beside it, suffix `.json`. An
    `out` that is itself a `.json` file would be overwritten by its report: refused."""
    out = Path(out)
    if out.suffix == ".json":
        raise ValueError(f"synthesize.out={out}: the problems are JSONL and their report is written to "
                         f"{out} itself; name the problems file {out.with_suffix('.jsonl')}")
    return out.with_suffix(".json")


def write_rows(rows: Sequence[dict], path: Union[str, Path]) -> Path:
    """The rows as JSONL (one problem per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
