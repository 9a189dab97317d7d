"""Turning states into model text, the same way for every model-backed component."""

from __future__ import annotations

from typing import Any

from treesearch.types import Prompt, State


# How a training row's prompt relates to the search's: as searched (worked examples
# included), or without the worked examples ("zero_shot", `without_demonstrations`).
PROMPT_FORMS = ("searched", "zero_shot")


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """Plain prompts pass through; chat messages go through the tokenizer's chat template
    with the assistant turn opened (the solution is written into that turn)."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant: "
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def without_demonstrations(prompt: Prompt) -> Prompt:
    """A chat prompt less its worked examples: the leading system messages and the last
    user message, the user/assistant exchanges between them dropped (a plain-text
    prompt, or one without examples, is returned as it is)."""
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    if not messages or messages[-1].get("role") != "user":
        last = messages[-1].get("role") if messages else None
        raise ValueError(f"a prompt whose last message is {last!r}, not 'user', has no question to keep")
    head = []
    for m in messages:
        if m.get("role") != "system":
            break
        head.append(m)
    return head + [messages[-1]]


def has_demonstrations(prompt: Prompt) -> bool:
    """Whether a chat prompt holds messages besides its system messages and last user message."""
    return not isinstance(prompt, str) and len(without_demonstrations(prompt)) != len(prompt)


def render_state(tokenizer: Any, state: State) -> str:
    """The full text a model continues or judges: rendered prompt + solution so far."""
    return render_prompt(tokenizer, state.prompt) + state.solution


def encode_state(tokenizer: Any, state: State) -> list[int]:
    """The token ids a policy continues for `state` (a BOS token is added only when the
    rendered text does not already start with one)."""
    text = render_state(tokenizer, state)
    bos = tokenizer.bos_token
    ids = list(tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"])
    if not ids:
        raise ValueError(f"state of problem {state.problem.id!r} renders to no tokens")
    return ids
