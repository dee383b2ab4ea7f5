"""Prompt formatting: the tokenizer's chat template, an optional system prompt, few-shot turns.

Small instruct models rarely box their answer zero-shot (SmolLM2-135M: ~10%); two worked
examples as earlier chat turns raise that to 55-68% (``docs/benchmarks.md``), so few-shot is
first-class. ``PromptFormat`` holds these choices once; every caller renders prompts with it.
Base models without a chat template get a plain ``Question:/Answer:`` layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from calmrl.data.synthetic import few_shot_examples

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


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes model input: system prompt, instruction suffix, few-shot turns."""

    system: str | None = None
    suffix: str | None = MATH_SUFFIX
    few_shot: tuple[tuple[str, str], ...] = ()

    @classmethod
    def build(
        cls, *, system: str | None = None, math_suffix: bool = True, few_shot: str | None = None
    ) -> PromptFormat:
        """From the data config's keys: ``few_shot`` names a built-in task whose worked
        examples are prepended."""
        shots = tuple(few_shot_examples(few_shot)) if few_shot else ()
        return cls(system=system, suffix=MATH_SUFFIX if math_suffix else None, few_shot=shots)

    def render(self, tokenizer: PreTrainedTokenizerBase, question: str) -> str:
        return format_prompt(
            tokenizer, question, system=self.system, suffix=self.suffix, few_shot=self.few_shot
        )

    def render_all(self, tokenizer: PreTrainedTokenizerBase, questions: Sequence[str]) -> list[str]:
        return [self.render(tokenizer, q) for q in questions]
