"""Truncated importance sampling (TIS): correcting rollouts drawn from a behaviour policy.

EAD's annealed temperature (or LED's mixture) samples from ``mu != pi_old``; the EAD paper's
appendix B reweights the policy gradient by ``pi_old / mu``, truncated at a cap for bounded
variance (Yao et al. 2025; veRL's rollout correction). ``docs/algorithms.md`` has the table.
"""

from __future__ import annotations

import torch

from calmrl.rl.reductions import LOG_RATIO_BOUND, check_choice, safe_div

TIS_LEVELS = ("token", "sequence")
TIS_MODES = ("truncate", "mask")


def _unit_totals(weights: torch.Tensor, raw: torch.Tensor, cap: float) -> dict[str, torch.Tensor]:
    """Sums over 1-D importance weights (one per token or per sequence); they add up over ranks
    (``max`` takes the maximum)."""
    return {
        "units": weights.new_tensor(float(weights.numel())),
        "sum": weights.sum(),
        "sum_sq": weights.square().sum(),
        "max": weights.max() if weights.numel() else weights.new_zeros(()),
        "truncated": (raw > cap).to(weights.dtype).sum(),
    }


def tis_stats(totals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tis_mean``, ``tis_max``, ``tis_frac_truncated``, ``tis_ess`` from ``_unit_totals``."""
    n = totals["units"]
    return {
        "tis_mean": safe_div(totals["sum"], n),
        "tis_max": totals["max"],
        "tis_frac_truncated": safe_div(totals["truncated"], n),
        # Kish's effective sample size over n: 1 for equal weights, 1/n for one dominant weight.
        "tis_ess": safe_div(totals["sum"].square(), n * totals["sum_sq"]),
    }


@torch.no_grad()
def tis_weights(
    old_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    cap: float = 2.0,
    level: str = "token",
    mode: str = "truncate",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Truncated importance sampling weights for off-policy rollouts (EAD appendix B).

    The rollout sampled from a behaviour policy ``mu`` (e.g. an annealed temperature, EAD)
    that differs from ``pi_old``. With ``d_t = logp_old_t - logp_mu_t`` clamped to ``+-20``:

    - ``level="token"``: ``rho_t = exp(d_t)``
    - ``level="sequence"``: ``rho = exp(sum_t d_t)`` for every token of the row
    - ``mode="truncate"``: ``w = min(rho, cap)`` (TIS; Yao et al. 2025, EAD appendix B)
    - ``mode="mask"``: ``w = rho`` if ``rho <= cap`` else 0 (drop the token / sequence)

    The weights are detached and multiply the per-token policy loss after PPO clipping
    (``policy_loss(..., tis_weights=w)``). They are 0 on padding, and 1 where ``mu = pi_old``.
    Same numbers as veRL's rollout correction (``rollout_is="token"|"sequence"``,
    ``rollout_is_threshold=cap``; mask mode = its ``"lower_upper"`` form with no lower bound).

    Returns:
        ``(weights [B, T], diagnostics)``. Diagnostics are taken over the units that carry
        one weight each (response tokens, or sequences with at least one response token):
        ``tis_mean``, ``tis_max``, ``tis_frac_truncated`` (share with ``rho > cap``) and
        ``tis_ess = (sum w)^2 / (n * sum w^2)`` in ``(0, 1]``; all 0 when there is no unit;
        and the sums behind them as ``totals/*``, which add up over ranks (``tis_stats``).
    """
    check_choice("level", level, TIS_LEVELS)
    check_choice("mode", mode, TIS_MODES)
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    valid = mask.bool()
    log_ratio = torch.where(valid, old_logprobs - behaviour_logprobs, 0.0)
    if level == "token":
        raw = torch.exp(log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))
    else:
        seq_log_ratio = log_ratio.sum(-1, keepdim=True)
        raw = torch.exp(seq_log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))
        raw = raw.expand_as(log_ratio)
    weights = raw.clamp(max=cap) if mode == "truncate" else torch.where(raw > cap, 0.0, raw)
    weights = torch.where(valid, weights, 0.0)
    if level == "token":
        totals = _unit_totals(weights[valid], raw[valid], cap)
    else:
        # Each row carries one weight; rows without a response token carry none.
        has_tokens = valid.any(-1)
        totals = _unit_totals(weights.amax(-1)[has_tokens], raw[:, 0][has_tokens], cap)
    return weights, {**tis_stats(totals), **{f"totals/{k}": v for k, v in totals.items()}}
