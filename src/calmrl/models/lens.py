"""The logit lens: the output projection applied to any hidden state (LED, layer entropy)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel


@dataclass
class LogitLens:
    """``lm_head`` applied to any hidden state, with what the model's forward does to logits.

    ``scale`` multiplies the logits (Cohere's ``logit_scale``, Granite's ``1/logits_scaling``)
    and ``softcap`` is Gemma's ``cap * tanh(logits / cap)``; with them the final normed state
    gives the model's own logits, so intermediate layers are read through the same head.
    """

    lm_head: nn.Module = field(repr=False)
    final_norm: nn.Module | None = field(repr=False)
    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, model: PreTrainedModel) -> LogitLens:
        config = model.config.get_text_config()
        scale = getattr(config, "logit_scale", None) or 1.0
        if getattr(config, "logits_scaling", None):
            scale = 1.0 / config.logits_scaling
        return cls(
            lm_head=model.get_output_embeddings(),
            final_norm=find_final_norm(model),
            scale=float(scale),
            softcap=getattr(config, "final_logit_softcapping", None),
        )

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    def __call__(self, states: torch.Tensor, *, norm: bool = False) -> torch.Tensor:
        """``states`` [..., H] -> fp32 logits [..., V]; ``norm`` applies the final norm first."""
        if norm:
            if self.final_norm is None:
                raise ValueError("norm: this model has no final norm module that calmrl can find")
            states = self.final_norm(states)
        logits = self.lm_head(states).float()
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


def find_final_norm(model: PreTrainedModel) -> nn.Module | None:
    """The norm between the last decoder layer and ``lm_head`` (``model.model.norm`` mostly)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in ("norm", "final_layernorm", "ln_f"):
        module = getattr(decoder, name, None)
        if isinstance(module, nn.Module):
            return module
    return None
