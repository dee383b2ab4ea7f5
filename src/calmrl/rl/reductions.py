"""Masked reductions over per-token tensors ``[B, T]`` with a response mask (bool or float).

``aggregate`` is veRL's ``agg_loss``: how a per-token loss becomes the scalar that is minimised.
"""

from __future__ import annotations

import torch

AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
# Log-ratios are clamped to +-20 before exp (as veRL), so that one wild token cannot overflow.
LOG_RATIO_BOUND = 20.0


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den > 0``, else 0 (an empty mask has ``num == 0``)."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def _masked(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values with padding set to exactly 0 (even if NaN there) and the mask as floats."""
    m = mask.to(values.dtype)
    return torch.where(mask.bool(), values, 0.0) * m, m


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the response tokens; 0 for an empty mask."""
    x, m = _masked(values, mask)
    return safe_div(x.sum(), m.sum())


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss ``l[i, t]`` to a scalar, as veRL's ``agg_loss``.

    With ``m`` the mask, ``n_i = sum_t m[i, t]`` and ``S`` the number of rows with ``n_i > 0``:

    - ``token-mean``: ``sum_{i,t} m l / sum_{i,t} m`` (DAPO's token-level loss)
    - ``token-sum``: ``sum_{i,t} m l``
    - ``seq-mean-token-sum``: ``(1/S) sum_i sum_t m l``
    - ``seq-mean-token-mean``: ``(1/S) sum_i (sum_t m l) / n_i`` (original GRPO)
    - ``seq-mean-token-sum-norm``: ``seq-mean-token-sum / loss_scale_factor``, by default
      ``T`` (Dr. GRPO's constant normaliser)

    Rows with no response token count for nothing. Where veRL returns NaN (an all-zero
    mask), this returns 0.

    Args:
        loss: ``[B, T]`` per-token loss.
        mask: ``[B, T]`` response mask.
        mode: one of :data:`AGG_MODES`.
        loss_scale_factor: the constant of ``seq-mean-token-sum-norm``; ``None`` uses ``T``.
    """
    check_choice("mode", mode, AGG_MODES)
    if loss.shape != mask.shape:
        raise ValueError(f"loss and mask must have the same shape, got {loss.shape}, {mask.shape}")
    x, m = _masked(loss, mask)
    if mode == "token-mean":
        return safe_div(x.sum(), m.sum())
    if mode == "token-sum":
        return x.sum()
    tokens_per_seq = m.sum(-1)
    num_seqs = (tokens_per_seq > 0).sum().to(x.dtype)
    if mode == "seq-mean-token-mean":
        return safe_div(safe_div(x.sum(-1), tokens_per_seq).sum(), num_seqs)
    seq_mean = safe_div(x.sum(), num_seqs)  # padding is 0 in x, so this sums token sums
    if mode == "seq-mean-token-sum-norm":
        return seq_mean / (loss.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    return seq_mean
