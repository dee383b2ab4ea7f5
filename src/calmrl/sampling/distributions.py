"""Per-row logits transforms: temperature and top-k / top-p / min-p truncation.

The order matches vLLM and HF ``generate``: divide by the temperature, then truncate. The
log-softmax of the truncated, scaled logits is the distribution tokens are actually drawn from,
and hence the exact behaviour log-prob that truncated importance sampling needs.
"""

from __future__ import annotations

import torch


def validate_truncation(top_k: int | None, top_p: float | None, min_p: float | None) -> None:
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k: must be >= 1 (or None to disable), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: must be in (0, 1] (or None to disable), got {top_p}")
    if min_p is not None and not 0.0 <= min_p < 1.0:
        raise ValueError(f"min_p: must be in [0, 1) (or None to disable), got {min_p}")


def truncate(
    logits: torch.Tensor,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> torch.Tensor:
    """Set logits outside the top-k / nucleus / min-p set to -inf. ``logits``: [B, V]."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Keep a token if the mass strictly before it is < top_p (the top-1 always survives).
        remove_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    if min_p is not None and min_p > 0.0:
        probs = logits.softmax(dim=-1)
        threshold = min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def sampling_log_probs(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> torch.Tensor:
    """``log softmax(truncate(h / tau))`` per row: the sampling distribution. [B, V] -> [B, V]."""
    scaled = logits / temperatures.to(logits.dtype).unsqueeze(-1)
    return truncate(scaled, top_k=top_k, top_p=top_p, min_p=min_p).log_softmax(dim=-1)
