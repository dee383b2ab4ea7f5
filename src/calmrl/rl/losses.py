"""Policy-gradient losses, KL estimators, entropy terms and the value loss.

Pure tensor functions whose numbers equal veRL's ``verl/trainer/ppo/core_algos.py`` for the
same settings (policy losses "vanilla", "clip_cov", "kl_cov"; ``agg_loss``; ``kl_penalty``;
the value loss; checked by ``make parity``). The equations, papers and the matching
veRL / TRL / OpenRLHF options are in ``docs/algorithms.md``.

Policy losses are registered by name (``register_policy_loss``) with one signature::

    loss_fn(logprobs, old_logprobs, advantages, mask, *, agg, tis_weights, **options)
        -> (loss, metrics)

and share one PPO core: the ratio, the clipped surrogate and "TIS weight, then aggregate".
Per-token tensors are ``[B, T]`` with a response mask ``[B, T]`` (bool or float, 1 on response
tokens). Losses are to be minimised. Metrics are detached 0-dim tensors, so that logging them
costs no device sync until the caller asks for ``.item()``.
"""

from __future__ import annotations

import math

import torch

from calmrl.rl.reductions import LOG_RATIO_BOUND, aggregate, masked_mean
from calmrl.rl.registry import Registry

KL_KINDS = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")

POLICY_LOSSES = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register


# ---------------------------------------------------------------------------------------------
# The shared PPO core


def _ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, *, bounded: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log r, r)`` with ``r = exp(logp - logp_old)``; ``bounded`` clamps ``log r`` to +-20."""
    log_ratio = logprobs - old_logprobs
    if bounded:
        log_ratio = log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return log_ratio, torch.exp(log_ratio)


def _clipped_surrogate(
    advantages: torch.Tensor, ratio: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(-A r, -A clip(r, 1 - low, 1 + high), their max)`` per token (Schulman et al. 2017)."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return unclipped, clipped, torch.maximum(unclipped, clipped)


def _reduce(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    agg: str,
    tis_weights: torch.Tensor | None,
    loss_scale_factor: float | None,
) -> torch.Tensor:
    """TIS weights multiply the per-token loss after clipping (EAD appendix B), then aggregate."""
    if tis_weights is not None:
        per_token = per_token * tis_weights.detach()
    return aggregate(per_token, mask, agg, loss_scale_factor=loss_scale_factor)


def _covariance(advantages: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``(A - mean A)(logp - mean logp)``, means over response tokens (Cui et al.)."""
    return (advantages - masked_mean(advantages, mask)) * (logp - masked_mean(logp, mask))


# ---------------------------------------------------------------------------------------------
# Registered policy losses


@register_policy_loss("vanilla")
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
    log_ratio, ratio = _ratio(logprobs, old_logprobs, bounded=True)
    unclipped, clipped, loss_ppo = _clipped_surrogate(advantages, ratio, clip_low, clip_high)
    loss_dual_bound = -advantages * clip_ratio_c
    negative = advantages < 0
    per_token = torch.where(negative, torch.minimum(loss_ppo, loss_dual_bound), loss_ppo)
    loss = _reduce(per_token, mask, agg, tis_weights, loss_scale_factor)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            "clipfrac_lower": masked_mean(
                ((loss_ppo > loss_dual_bound) & negative).to(ratio.dtype), mask
            ),
            "approx_kl": masked_mean(-log_ratio, mask),
        }
    return loss, metrics


@register_policy_loss("clip_cov")
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
    log_ratio, ratio = _ratio(logprobs, old_logprobs, bounded=False)
    unclipped, clipped, loss_ppo = _clipped_surrogate(advantages, ratio, clip_low, clip_high)
    valid = mask.bool()
    with torch.no_grad():
        cov = _covariance(advantages, logprobs.detach(), mask)
        candidates = valid & ~(clipped > unclipped) & (cov > clip_cov_lb) & (cov < clip_cov_ub)
        num_detach = max(int(clip_cov_ratio * valid.sum().item()), 1)
        candidate_idx = candidates.nonzero()
        detached = torch.zeros_like(valid)
        if len(candidate_idx) > 0:
            # randperm must run on the generator's device (a CUDA generator fails on CPU).
            device = generator.device if generator is not None else torch.device("cpu")
            perm = torch.randperm(len(candidate_idx), generator=generator, device=device)
            chosen = candidate_idx[perm[:num_detach].to(candidate_idx.device)]
            detached[chosen[:, 0], chosen[:, 1]] = True
    per_token = torch.where(detached, 0.0, loss_ppo)
    loss = _reduce(per_token, mask, agg, tis_weights, loss_scale_factor)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean(detached.to(ratio.dtype), mask),
            "approx_kl": masked_mean(-log_ratio, mask),
        }
    return loss, metrics


@register_policy_loss("kl_cov")
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
    log_ratio, ratio = _ratio(logprobs, old_logprobs, bounded=False)
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
    loss = _reduce(per_token, mask, agg, tis_weights, loss_scale_factor)
    with torch.no_grad():
        metrics = {
            "approx_kl": masked_mean(-log_ratio, mask),
            "kl_abs": masked_mean(log_ratio.abs(), mask),
            "kl_cov_frac": masked_mean(penalised.to(ratio.dtype), mask),
        }
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# Terms added to the policy loss


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
        neg = (-diff).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
        kl = (torch.exp(neg) - neg - 1.0).clamp(-10.0, 10.0)
    if straight_through:
        k2 = 0.5 * diff.square()
        kl = k2 - k2.detach() + kl.detach()
    return kl


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


@torch.no_grad()
def top_entropy_mask(
    entropy: torch.Tensor, mask: torch.Tensor, quantile: float, values: torch.Tensor | None = None
) -> torch.Tensor:
    """The forking tokens: response tokens whose entropy is among the top ``quantile`` of the
    batch (Wang et al. 2025, "Beyond the 80/20 Rule": the policy gradient through the top 20%
    highest-entropy tokens alone matches or beats the full gradient).

    The ``k = ceil(quantile * n)`` highest of the ``n`` response-token entropies set the
    threshold (ties at it are kept); ``values`` are the entropies to rank when the batch spans
    several ranks (all of them), else the masked ``entropy``. ``quantile = 1`` keeps every
    response token. Used as 0/1 weights on the per-token policy loss, beside TIS weights, so
    the aggregation's denominator stays all response tokens (as TRL's
    ``top_entropy_quantile``).

    Returns:
        ``[B, T]`` bool.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"top_entropy_quantile must be in (0, 1], got {quantile}")
    valid = mask.bool()
    ranked = entropy[valid] if values is None else values
    if quantile >= 1.0 or ranked.numel() == 0:
        return valid
    k = max(1, math.ceil(quantile * ranked.numel()))
    threshold = ranked.float().topk(k).values.min()
    return valid & (entropy.float() >= threshold)
