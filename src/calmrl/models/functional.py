"""Tensor functions over model inputs and outputs: shared by engine, trainer, analysis."""

from __future__ import annotations

import torch


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: 0 at each row's first real token (padding: 0)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def entropy_from_logits(
    logits: torch.Tensor, log_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` of ``softmax(logits)`` over the last dimension.

    Computed as veRL does, ``logsumexp(h) - sum_v p_v h_v``, but on ``h - max(h)``: the two
    terms then stay small, so large logits lose no precision to cancellation. Logits of
    ``-inf`` (filtered vocabulary) contribute 0, not NaN. ``[..., V] -> [...]``. A caller
    that already holds ``log_probs = log_softmax(logits)`` passes it and saves two passes
    over the vocabulary: ``H = -sum_v exp(l_v) l_v``.
    """
    if log_probs is not None:
        return -(log_probs.exp() * log_probs).nan_to_num().sum(dim=-1)
    shifted = logits - logits.amax(-1, keepdim=True).detach()
    probs = torch.softmax(shifted, dim=-1)
    finite = torch.where(torch.isfinite(shifted), shifted, 0.0)
    return torch.logsumexp(shifted, dim=-1) - (probs * finite).sum(-1)
