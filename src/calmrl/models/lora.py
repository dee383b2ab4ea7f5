"""LoRA adapters through peft, and loading saved weights into a plain or LoRA model."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from calmrl.models.compat import tied_keys


def with_lora(model: PreTrainedModel, rank: int, alpha: float) -> PreTrainedModel:
    """Wrap every linear layer with rank-``rank`` adapters; only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("model.lora_rank: LoRA needs peft; pip install 'calmrl[lora]'") from None
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def load_weights(
    model: PreTrainedModel, weights: dict[str, torch.Tensor]
) -> tuple[list[str], list[str]]:
    """Load a saved state dict; returns the (missing, unexpected) keys that matter.

    A LoRA checkpoint holds the adapters only (peft's format) and goes through peft; a full
    one may lack the keys tied to another weight.
    """
    if is_lora(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, weights)
        return [k for k in result.missing_keys if "lora_" in k], list(result.unexpected_keys)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    return [k for k in missing if k not in tied_keys(model)], list(unexpected)


def merged(model: PreTrainedModel) -> PreTrainedModel:
    """A plain HF model: LoRA adapters merged into the base weights (others unchanged)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
