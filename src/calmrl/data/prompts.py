"""Prompt formatting: the tokenizer's chat template, an optional system prompt, few-shot turns.

Small instruct models rarely box their answer zero-shot (SmolLM2-135M: ~10%); two worked
examples as earlier chat turns raise that to 55-68% (DESIGN 4), so few-shot is first-class.
Base models without a chat template get a plain ``Question:/Answer:`` layout.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

MATH_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."


def _with_suffix(question: str, suffix: str | None) -> str:
    return f"{question}\n{suffix}" if suffix else question


def format_prompt(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    *,
    system: str | None = None,
    suffix: str | None = MATH_SUFFIX,
    few_shot: Sequence[tuple[str, str]] = (),
) -> str:
    """The text to feed the model (special tokens included) for one question.

    ``few_shot`` holds (question, answer) pairs shown as earlier turns; ``suffix`` is appended
    to every question (the math instruction by default; ``None`` for none).
    """
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": system}] if system else []
        for shot_question, shot_answer in few_shot:
            messages.append({"role": "user", "content": _with_suffix(shot_question, suffix)})
            messages.append({"role": "assistant", "content": shot_answer})
        messages.append({"role": "user", "content": _with_suffix(question, suffix)})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [system] if system else []
    for shot_question, shot_answer in few_shot:
        parts.append(f"Question: {_with_suffix(shot_question, suffix)}\nAnswer: {shot_answer}")
    parts.append(f"Question: {_with_suffix(question, suffix)}\nAnswer:")
    text = "\n\n".join(parts)
    # Without a template nothing adds BOS; base models (Gemma) expect it.
    bos = tokenizer.bos_token if getattr(tokenizer, "add_bos_token", True) else None
    return f"{bos}{text}" if bos and not text.startswith(bos) else text
