"""Models: loading, HF version shims, the logit lens, LoRA, tiny test models."""

from calmrl.models.compat import eos_token_ids, supports_logits_to_keep
from calmrl.models.functional import entropy_from_logits, positions_from_mask
from calmrl.models.lens import LogitLens, find_final_norm
from calmrl.models.loading import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    cache_dir,
    load_model,
    prepare_tokenizer,
    resolve_model_path,
)
from calmrl.models.tiny import tiny_model, tiny_tokenizer

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "LogitLens",
    "cache_dir",
    "entropy_from_logits",
    "eos_token_ids",
    "find_final_norm",
    "load_model",
    "positions_from_mask",
    "prepare_tokenizer",
    "resolve_model_path",
    "supports_logits_to_keep",
    "tiny_model",
    "tiny_tokenizer",
]
