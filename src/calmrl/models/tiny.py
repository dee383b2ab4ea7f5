"""Tiny randomly initialised decoders and a byte-level tokenizer, built in code for tests."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

_TINY_SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "</think>"]
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def tiny_tokenizer() -> AutoTokenizer:
    """A byte-level tokenizer built in code (no download): 256 bytes plus ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(_TINY_SPECIALS + byte_chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "</s>", "</think>"],
    )
    tokenizer.chat_template = _CHATML
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_model(
    arch: str = "llama",
    *,
    num_layers: int = 4,
    hidden_size: int = 64,
    head_dim: int | None = None,
    seed: int = 0,
) -> tuple[PreTrainedModel, AutoTokenizer]:
    """A randomly initialised decoder (llama, qwen2, qwen3 or gemma3) for tests: built in ~0.1 s.

    Four query heads of ``head_dim`` (default ``hidden_size // 4``); vLLM's CPU attention needs
    ``head_dim=64`` (it rejects 16, "Unsupported CPU attention configuration").
    """
    from transformers import AutoConfig

    tokenizer = tiny_tokenizer()
    model_types = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}
    if arch not in model_types:
        raise ValueError(f"arch: unknown {arch!r}; choose one of {sorted(model_types)}")
    config = AutoConfig.for_model(
        model_types[arch],
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim or hidden_size // 4,
        max_position_embeddings=512,
        tie_word_embeddings=arch != "llama",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init gives near-uniform logits; a larger scale makes distributions peaky like a
    # trained model's, so top-k/top-p truncation and EOS actually matter in tests.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
