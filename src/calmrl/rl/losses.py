"""Policy-gradient losses, KL estimators, entropy terms and truncated importance sampling.

Pure tensor functions whose numbers equal veRL's ``verl/trainer/ppo/core_algos.py`` for the
same settings (policy losses "vanilla", "clip_cov", "kl_cov"; ``agg_loss``; ``kl_penalty``;
the value loss; checked by ``make parity``). The equations, papers and the matching
veRL / TRL / OpenRLHF options are in ``docs/algorithms.md``.

Per-token tensors are ``[B, T]`` with a response mask ``[B, T]`` (bool or float, 1 on response
tokens). Losses are to be minimised. Metrics are detached 0-dim tensors, so that logging them
costs no device sync until the caller asks for ``.item()``.
"""

from __future__ import annotations

import torch

__all__ = [
    "AGG_MODES",
    "KL_KINDS",
    "aggregate",
    "clip_cov_policy_loss",
    "entropy_from_logits",
    "entropy_regularization",
    "kl_cov_policy_loss",
    "kl_penalty",
    "masked_mean",
    "policy_loss",
    "tis_weights",
    "value_loss",
]

AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
KL_KINDS = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
TIS_LEVELS = ("token", "sequence")
TIS_MODES = ("truncate", "mask")

# Log-ratios are clamped to +-20 before exp (as veRL), so that one wild token cannot overflow.
_LOG_RATIO_BOUND = 20.0


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den > 0``, else 0 (an empty mask has ``num == 0``)."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def _masked(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values with padding set to exactly 0 (even if NaN there) and the mask as floats."""
    m = mask.to(values.dtype)
    return torch.where(mask.bool(), values, 0.0) * m, m


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the response tokens; 0 for an empty mask."""
    x, m = _masked(values, mask)
    return _safe_div(x.sum(), m.sum())


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
    _check_choice("mode", mode, AGG_MODES)
    if loss.shape != mask.shape:
        raise ValueError(f"loss and mask must have the same shape, got {loss.shape}, {mask.shape}")
    x, m = _masked(loss, mask)
    if mode == "token-mean":
        return _safe_div(x.sum(), m.sum())
    if mode == "token-sum":
        return x.sum()
    tokens_per_seq = m.sum(-1)
    num_seqs = (tokens_per_seq > 0).sum().to(x.dtype)
    if mode == "seq-mean-token-mean":
        return _safe_div(_safe_div(x.sum(-1), tokens_per_seq).sum(), num_seqs)
    seq_mean = _safe_div(x.sum(), num_seqs)  # padding is 0 in x, so this sums token sums
    if mode == "seq-mean-token-sum-norm":
        return seq_mean / (loss.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    return seq_mean


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    agg: str = "token-mean",
    tis_weights: torch.Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with clip-higher and dual-clip (veRL policy loss "vanilla").

    With ``r_t = exp(clamp(logp_t - logp_old_t, -20, 20))``::

        l_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high))     (Schulman 2017)
        l_t = min(l_t, -A_t * clip_ratio_c)   where A_t < 0                   (dual-clip)
        l_t = w_t * l_t                       if TIS weights are given       (after clipping)
        loss = aggregate(l, mask, agg)

    ``clip_high > clip_low`` is DAPO's clip-higher (Yu et al. 2025, 0.2 / 0.28); dual-clip
    (Ye et al. 2020, arXiv:1912.09729) bounds the loss of a negative-advantage token whose
    ratio exploded. ``tis_weights`` come from :func:`tis_weights` and are detached here.

    Args:
        logprobs: ``[B, T]`` log-probs of the sampled tokens under the policy being trained.
        old_logprobs: ``[B, T]`` the same under the policy that is the PPO anchor (pi_old).
        advantages: ``[B, T]`` per-token advantages.
        mask: ``[B, T]`` response mask.
        clip_low, clip_high: the trust region ``[1 - clip_low, 1 + clip_high]``.
        clip_ratio_c: dual-clip bound, must be > 1.
        agg: aggregation mode, see :func:`aggregate`.
        tis_weights: optional ``[B, T]`` importance weights multiplying the clipped loss.
        loss_scale_factor: passed to :func:`aggregate`.

    Returns:
        ``(loss, metrics)``; metrics: ``clipfrac`` (tokens where the clipped branch is taken),
        ``clipfrac_lower`` (negative-advantage tokens where dual-clip binds), ``approx_kl``
        (mean of ``logp_old - logp``, veRL's ``ppo_kl``).
    """
    if clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c}")
    log_ratio = (logprobs - old_logprobs).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss_ppo = torch.maximum(loss_unclipped, loss_clipped)
    loss_dual_bound = -advantages * clip_ratio_c
    negative = advantages < 0
    per_token = torch.where(negative, torch.minimum(loss_ppo, loss_dual_bound), loss_ppo)
    if tis_weights is not None:
        per_token = per_token * tis_weights.detach()
    loss = aggregate(per_token, mask, agg, loss_scale_factor=loss_scale_factor)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((loss_clipped > loss_unclipped).to(ratio.dtype), mask),
            "clipfrac_lower": masked_mean(
                ((loss_ppo > loss_dual_bound) & negative).to(ratio.dtype), mask
            ),
            "approx_kl": masked_mean(-log_ratio, mask),
        }
    return loss, metrics


def clip_cov_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    agg: str = "token-mean",
    tis_weights: torch.Tensor | None = None,
    loss_scale_factor: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs").

    Entropy collapses because tokens with a large covariance between log-prob and advantage
    dominate the update. Clip-Cov cuts the gradient of a few of them::

        cov_t = (A_t - mean(A)) * (logp_t - mean(logp))          (means over response tokens)
        candidates = {t : clip_cov_lb < cov_t < clip_cov_ub, t not already PPO-clipped}
        D = max(1, int(clip_cov_ratio * #tokens)) candidates drawn uniformly at random
        l_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high)) * [t not in D]

    with ``r_t = exp(logp_t - logp_old_t)`` (not clamped, as veRL; no dual-clip). The draw
    uses ``torch.randperm`` over the candidates in row-major order, with ``generator`` (the
    global RNG if None), so a generator seeded like ``torch.manual_seed`` reproduces veRL.

    Returns:
        ``(loss, metrics)``; metrics: ``clipfrac`` (fraction of tokens in ``D``, veRL's
        ``pg_clipfrac`` for this loss) and ``approx_kl``.
    """
    if clip_cov_ratio <= 0:
        raise ValueError(f"clip_cov_ratio must be > 0, got {clip_cov_ratio}")
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    valid = mask.bool()
    with torch.no_grad():
        logp = logprobs.detach()
        cov = (advantages - masked_mean(advantages, mask)) * (logp - masked_mean(logp, mask))
        candidates = (
            valid & ~(loss_clipped > loss_unclipped) & (cov > clip_cov_lb) & (cov < clip_cov_ub)
        )
        num_detach = max(int(clip_cov_ratio * valid.sum().item()), 1)
        candidate_idx = candidates.nonzero()
        detached = torch.zeros_like(valid)
        if len(candidate_idx) > 0:
            # randperm must run on the generator's device (a CUDA generator fails on CPU).
            device = generator.device if generator is not None else torch.device("cpu")
            perm = torch.randperm(len(candidate_idx), generator=generator, device=device)
            chosen = candidate_idx[perm[:num_detach].to(candidate_idx.device)]
            detached[chosen[:, 0], chosen[:, 1]] = True
    per_token = torch.where(detached, 0.0, torch.maximum(loss_unclipped, loss_clipped))
    if tis_weights is not None:
        per_token = per_token * tis_weights.detach()
    loss = aggregate(per_token, mask, agg, loss_scale_factor=loss_scale_factor)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean(detached.to(ratio.dtype), mask),
            "approx_kl": masked_mean(-log_ratio, mask),
        }
    return loss, metrics


def kl_cov_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_cov_ratio: float = 2e-4,
    ppo_kl_coef: float = 1.0,
    agg: str = "token-mean",
    tis_weights: torch.Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs").

    Instead of clipping, put a KL penalty on the tokens with the largest covariance::

        cov_t = (A_t - mean(A)) * (logp_t - mean(logp))          (means over response tokens)
        K = top-k of cov over response tokens, k = max(1, int(kl_cov_ratio * #tokens))
        l_t = -A_t r_t + ppo_kl_coef * |logp_t - logp_old_t| * [t in K]

    with ``r_t = exp(logp_t - logp_old_t)``, no ratio clipping (as veRL). The paper uses
    ``ppo_kl_coef=1``; veRL's YAML default is 0.1 (its function fallback is 1).

    Returns:
        ``(loss, metrics)``; metrics: ``approx_kl`` (mean of ``logp_old - logp``), ``kl_abs``
        (mean ``|logp - logp_old|``, veRL's ``ppo_kl`` for this loss), ``kl_cov_frac``
        (fraction of tokens penalised).
    """
    if kl_cov_ratio <= 0:
        raise ValueError(f"kl_cov_ratio must be > 0, got {kl_cov_ratio}")
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    valid = mask.bool()
    penalised = torch.zeros_like(valid)
    with torch.no_grad():
        adv = advantages.detach()[valid]
        logp = logprobs.detach()[valid]
        if adv.numel() > 0:
            cov = (adv - adv.mean()) * (logp - logp.mean())
            k = max(1, int(adv.numel() * kl_cov_ratio))
            top = torch.topk(cov, k).indices
            flat = penalised.view(-1)
            flat[valid.reshape(-1).nonzero().squeeze(1)[top]] = True
    per_token = -advantages * ratio + torch.where(penalised, ppo_kl_coef * log_ratio.abs(), 0.0)
    if tis_weights is not None:
        per_token = per_token * tis_weights.detach()
    loss = aggregate(per_token, mask, agg, loss_scale_factor=loss_scale_factor)
    with torch.no_grad():
        metrics = {
            "approx_kl": masked_mean(-log_ratio, mask),
            "kl_abs": masked_mean(log_ratio.abs(), mask),
            "kl_cov_frac": masked_mean(penalised.to(ratio.dtype), mask),
        }
    return loss, metrics


def value_loss(
    values_pred: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float = 0.5,
    agg: str = "token-mean",
    loss_scale_factor: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value-head loss for PPO (as veRL's ``compute_value_loss``, from TRL).

    ``V_clip = clip(V, V_old - c, V_old + c)``;
    ``loss = 0.5 * aggregate(max((V - R)^2, (V_clip - R)^2), mask, agg)``.

    Returns:
        ``(loss, metrics)``; metrics: ``vf_clipfrac`` (tokens where the clipped error is larger).
    """
    clipped = torch.maximum(
        torch.minimum(values_pred, old_values + clip_range), old_values - clip_range
    )
    err_unclipped = (values_pred - returns) ** 2
    err_clipped = (clipped - returns) ** 2
    per_token = torch.maximum(err_unclipped, err_clipped)
    loss = 0.5 * aggregate(per_token, mask, agg, loss_scale_factor=loss_scale_factor)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err_unclipped).to(per_token.dtype), mask)
    return loss, {"vf_clipfrac": clipfrac}


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "low_var_kl"
) -> torch.Tensor:
    """Per-token estimator of ``KL(pi || pi_ref)`` from sampled-token log-probs (Schulman 2020).

    With ``d = logp - logp_ref``:

    - ``"kl"`` / ``"k1"``: ``d``
    - ``"abs"``: ``|d|``
    - ``"mse"`` / ``"k2"``: ``d^2 / 2``
    - ``"low_var_kl"`` / ``"k3"``: ``exp(-d) + d - 1`` with ``-d`` clamped to ``[-20, 20]`` and
      the result clamped to ``[-10, 10]``, as veRL

    A trailing ``"+"`` (e.g. ``"k3+"``) keeps the value but takes the gradient of k2, which
    is the unbiased gradient of KL (veRL's straight-through option).

    Returns:
        ``[B, T]`` per-token estimate; aggregate it with :func:`aggregate`.
    """
    straight_through = kind.endswith("+")
    base = kind[:-1] if straight_through else kind
    if base not in KL_KINDS:
        raise ValueError(f"kind must be one of {KL_KINDS} (optionally with a '+'), got {kind!r}")
    diff = logprobs - ref_logprobs
    if base in ("kl", "k1"):
        kl = diff
    elif base == "abs":
        kl = diff.abs()
    elif base in ("mse", "k2"):
        kl = 0.5 * diff.square()
    else:
        neg = (-diff).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
        kl = (torch.exp(neg) - neg - 1.0).clamp(-10.0, 10.0)
    if straight_through:
        k2 = 0.5 * diff.square()
        kl = k2 - k2.detach() + kl.detach()
    return kl


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` of ``softmax(logits)`` over the last dimension.

    Computed as veRL does, ``logsumexp(h) - sum_v p_v h_v``, but on ``h - max(h)``: the two
    terms then stay small, so large logits lose no precision to cancellation. Logits of
    ``-inf`` (filtered vocabulary) contribute 0, not NaN. ``[..., V] -> [...]``.
    """
    shifted = logits - logits.amax(-1, keepdim=True).detach()
    probs = torch.softmax(shifted, dim=-1)
    finite = torch.where(torch.isfinite(shifted), shifted, 0.0)
    return torch.logsumexp(shifted, dim=-1) - (probs * finite).sum(-1)


def entropy_regularization(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    coef: float,
    agg: str = "token-mean",
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """Entropy bonus as a loss term: ``-coef * aggregate(H, mask, agg)`` (Williams & Peng 1991).

    Add it to the policy loss (veRL: ``pg_loss - entropy_coeff * entropy_loss``). This is the
    maximum-entropy baseline that :func:`calmrl.rl.advantages.entropy_shaped_advantages` is
    compared with: here the entropy carries a gradient, there it does not.
    """
    return -coef * aggregate(entropy, mask, agg, loss_scale_factor=loss_scale_factor)


def _unit_stats(weights: torch.Tensor, raw: torch.Tensor, cap: float) -> dict[str, torch.Tensor]:
    """Diagnostics over 1-D importance weights (one per token or per sequence)."""
    n = weights.numel()
    zero = weights.new_zeros(())
    if n == 0:
        return {"tis_mean": zero, "tis_max": zero, "tis_frac_truncated": zero, "tis_ess": zero}
    total, total_sq = weights.sum(), weights.square().sum()
    return {
        "tis_mean": total / n,
        "tis_max": weights.max(),
        "tis_frac_truncated": (raw > cap).to(weights.dtype).mean(),
        # Kish's effective sample size over n: 1 for equal weights, 1/n for one dominant weight.
        "tis_ess": _safe_div(total.square(), n * total_sq),
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
    """Truncated importance sampling weights for off-policy rollouts (DESIGN 3.3).

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
        ``tis_ess = (sum w)^2 / (n * sum w^2)`` in ``(0, 1]``; all 0 when there is no unit.
    """
    _check_choice("level", level, TIS_LEVELS)
    _check_choice("mode", mode, TIS_MODES)
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    valid = mask.bool()
    log_ratio = torch.where(valid, old_logprobs - behaviour_logprobs, 0.0)
    if level == "token":
        raw = torch.exp(log_ratio.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))
    else:
        seq_log_ratio = log_ratio.sum(-1, keepdim=True)
        raw = torch.exp(seq_log_ratio.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))
        raw = raw.expand_as(log_ratio)
    weights = raw.clamp(max=cap) if mode == "truncate" else torch.where(raw > cap, 0.0, raw)
    weights = torch.where(valid, weights, 0.0)
    if level == "token":
        stats = _unit_stats(weights[valid], raw[valid], cap)
    else:
        # Each row carries one weight; rows without a response token carry none.
        has_tokens = valid.any(-1)
        stats = _unit_stats(weights.amax(-1)[has_tokens], raw[:, 0][has_tokens], cap)
    return weights, stats
