"""A scalar value head on the policy's final hidden state, for PPO with GAE.

``V(s_t) = w . h_t + b`` where ``h_t`` is the input of the model's output projection (the final
normed hidden state) at the position that predicts response token ``t``, i.e. the same
positions as the logits of ``log pi(y_t | s_t)``. The head shares the policy's trunk (as TRL's
original ``AutoModelForCausalLMWithValueHead``), so one forward gives log-probs and values;
veRL instead trains a separate critic model, which doubles the memory of the update. The head
starts at zero (``V = 0``), so the first GAE advantages are the whitened returns.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel


class ValueHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @classmethod
    def for_model(cls, model: PreTrainedModel) -> ValueHead:
        head = model.get_output_embeddings()
        device = head.weight.device
        # fp32 always: the head is tiny, and regression targets in bf16 lose the small errors.
        return cls(head.weight.shape[1]).to(device=device, dtype=torch.float32)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, T, H]`` hidden states -> ``[N, T]`` values (fp32, also under autocast)."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.linear(hidden.float()).squeeze(-1)
