"""Step semantics shared by every policy backend.

A step's text ends with (and includes) the first stop string that follows some
non-whitespace text; anything decoded after it is cut. `num_tokens`/`token_ids` are the
tokens generated (the end-of-sequence token included when one was sampled) and `logprob`
their summed log-probability under the model's unscaled distribution. A completion
(`Policy.complete`) is split into such steps afterwards (`split_completion`).
"""

from __future__ import annotations

import zlib
from typing import Any, Optional, Sequence

from treesearch.types import Step



def find_stop(text: str, stops: Sequence[str]) -> Optional[int]:
    """End offset of the first stop string in `text` that follows non-whitespace text
    (so a step is never whitespace only), or None."""
    if not stops:
        return None
    first = len(text) - len(text.lstrip())  # index of the first non-whitespace char
    if first >= len(text):
        return None
    best = None
    for stop in stops:
        if not stop:
            continue
        pos = text.find(stop, first + 1)
        if pos >= 0 and (best is None or pos + len(stop) < best):
            best = pos + len(stop)
    return best


def step_boundaries(text: str, stops: Sequence[str]) -> list[int]:
    """End offsets of the steps of `text` split at `stops` (each step keeps its stop
    string; a whitespace-only tail joins the last step). The last offset is len(text)."""
    ends: list[int] = []
    start = 0
    while True:
        end = find_stop(text[start:], stops)
        if end is None:
            break
        ends.append(start + end)
        start += end
    if not ends or text[start:].strip():
        ends.append(len(text))
    else:
        ends[-1] = len(text)
    return ends


def token_char_ends(tokenizer: Any, token_ids: Sequence[int]) -> list[int]:
    """For each token, the length of the text decoded up to and including it
    (non-decreasing; special tokens add nothing)."""
    if not token_ids:
        return []
    prefixes = [list(token_ids[: i + 1]) for i in range(len(token_ids))]
    texts = tokenizer.batch_decode(prefixes, skip_special_tokens=True)
    out, high = [], 0
    for t in texts:
        high = max(high, len(t))
        out.append(high)
    return out


def split_completion(
    tokenizer: Any,
    text: str,
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    finish_reason: str,
    stops: Sequence[str],
) -> list[Step]:
    """Split one completion into steps at `stops`. Each token goes to the step in which
    its decoded text ends, so the steps' `num_tokens` add up to `len(token_ids)`. The
    last step carries the completion's own finish reason ("eos" or "length")."""
    bounds = step_boundaries(text, stops)
    char_ends = token_char_ends(tokenizer, token_ids)
    owner, k = [], 0
    for end in char_ends:
        while k < len(bounds) - 1 and end > bounds[k]:
            k += 1
        owner.append(k)
    steps, start = [], 0
    for k, end in enumerate(bounds):
        idx = [i for i, o in enumerate(owner) if o == k]
        last = k == len(bounds) - 1
        steps.append(
            Step(
                text=text[start:end],
                num_tokens=len(idx),
                logprob=float(sum(logprobs[i] for i in idx)),
                finish_reason=finish_reason if last else "stop",
                token_ids=tuple(int(token_ids[i]) for i in idx),
            )
        )
        start = end
    return steps


def request_seed(base: int, prompt_ids: Sequence[int], sample: int) -> int:
    """A per-sample seed from the request seed, the prompt's tokens and the sample's
    index among the samples of that prompt: results do not depend on batch composition."""
    digest = zlib.crc32(repr(tuple(prompt_ids)).encode())
    return (base * 1_000_003 + digest * 10_007 + sample) % (2**63 - 1)


def finished_step(text: str, token_ids: Sequence[int], logprobs: Sequence[float], finish: str, stops: Sequence[str]) -> Step:
    """The Step of one finished generation: its text cut after the first valid stop
    string when it finished by one (`finish == "stop"`)."""
    if finish == "stop":
        text = text[: find_stop(text, stops)]
    return Step(
        text=text,
        num_tokens=len(token_ids),
        logprob=float(sum(logprobs)),
        finish_reason=finish,
        token_ids=tuple(int(t) for t in token_ids),
    )


def eos_token_ids(*sources: Any) -> set[int]:
    """The end-of-sequence ids named by `sources` (a generation config, a tokenizer, ...:
    anything with an `eos_token_id` that is an id, a list of ids or None)."""
    ids: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            ids.update([value] if isinstance(value, int) else value)
    return {int(i) for i in ids}
