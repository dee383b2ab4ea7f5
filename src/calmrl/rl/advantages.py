"""Advantage estimators for RL with verifiable rewards.

Pure tensor functions, one per estimator, whose numbers equal veRL's
``verl/trainer/ppo/core_algos.py`` for the same settings (checked by ``make parity``).
The equations, papers and the matching veRL / TRL / OpenRLHF options are in
``docs/algorithms.md``.

Shapes: ``N`` sequences with one scalar reward each; per-token tensors are ``[B, T]`` with a
response mask ``[B, T]`` (bool or float, 1 on response tokens, 0 on padding).

Estimators are registered by name (``register_advantage``) with one signature::

    estimator(rewards [N], mask [N, T], group_index [N], *, values [N, T] | None, **options)
        -> (token advantages [N, T], value targets [N, T] or None)

``options`` are taken by name from the algorithm config (``norm_eps``, ``gamma``, ``lam``).
"""

from __future__ import annotations

import torch

from calmrl.rl.registry import Registry

__all__ = [
    "broadcast_to_tokens",
    "dapo_group_filter",
    "dr_grpo_advantages",
    "entropy_shaped_advantages",
    "gae_advantages",
    "grpo_advantages",
    "rloo_advantages",
]


def _check_group_args(rewards: torch.Tensor, group_index: torch.Tensor) -> None:
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [N] (one scalar per sequence), got {rewards.shape}")
    if group_index.shape != rewards.shape:
        raise ValueError(
            f"group_index must have the shape of rewards {tuple(rewards.shape)}, "
            f"got {tuple(group_index.shape)}"
        )


def _group_stats(
    rewards: torch.Tensor, group_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group count, mean and unbiased std, plus each sequence's dense group id.

    Group labels may be any integers (prompt ids); ``torch.unique`` maps them to ``0..G-1``.
    The std uses Bessel's correction like ``torch.std`` (and veRL); a group of one has std 0
    here, callers decide what a singleton means.
    """
    _, gid = torch.unique(group_index, return_inverse=True)
    num_groups = int(gid.max()) + 1 if gid.numel() else 0
    zeros = rewards.new_zeros(num_groups)
    count = zeros.index_add(0, gid, torch.ones_like(rewards))
    mean = zeros.index_add(0, gid, rewards) / count
    sq_dev = zeros.index_add(0, gid, (rewards - mean[gid]) ** 2)
    std = (sq_dev / (count - 1).clamp_min(1)).sqrt()
    return gid, count, mean, std


@torch.no_grad()
def grpo_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO group-relative advantage (Shao et al. 2024, DeepSeekMath).

    ``A_i = (R_i - mean_G(R)) / (std_G(R) + eps)`` with the unbiased std of the group ``G``
    that sequence ``i`` belongs to; with ``norm_by_std=False`` it is Dr. GRPO's
    ``A_i = R_i - mean_G(R)`` (Liu et al. 2025, "Understanding R1-Zero-Like Training").

    A group of one has no baseline: as in veRL it gets ``mean=0, std=1``, so
    ``A_i = R_i / (1 + eps)`` (or ``R_i`` without std). Groups whose rewards are all equal
    get ``A = 0``.

    Args:
        rewards: ``[N]`` scalar reward per sequence.
        group_index: ``[N]`` integer prompt id; sequences with the same id form a group.
        norm_by_std: divide by the group std (GRPO) or not (Dr. GRPO).
        eps: added to the std so that equal rewards give 0, not NaN.

    Returns:
        ``[N]`` advantages; use :func:`broadcast_to_tokens` for per-token ``[B, T]``.
    """
    _check_group_args(rewards, group_index)
    gid, count, mean, std = _group_stats(rewards, group_index)
    singleton = count == 1
    mean = mean.masked_fill(singleton, 0.0)
    std = std.masked_fill(singleton, 1.0)
    advantages = rewards - mean[gid]
    if norm_by_std:
        advantages = advantages / (std[gid] + eps)
    return advantages


def dr_grpo_advantages(rewards: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO advantage ``A_i = R_i - mean_G(R)`` (Liu et al. 2025): GRPO without the std.

    Same as ``grpo_advantages(rewards, group_index, norm_by_std=False)``.
    """
    return grpo_advantages(rewards, group_index, norm_by_std=False)


@torch.no_grad()
def rloo_advantages(rewards: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out advantage (Kool et al. 2019; Ahmadian et al. 2024).

    ``A_i = R_i - mean_{j in G, j != i}(R_j) = n / (n - 1) * (R_i - mean_G(R))`` for a group of
    size ``n > 1``. A group of one keeps ``A_i = R_i`` (baseline 0), as veRL's ``rloo``.

    Args:
        rewards: ``[N]`` scalar reward per sequence.
        group_index: ``[N]`` integer prompt id.

    Returns:
        ``[N]`` advantages.
    """
    _check_group_args(rewards, group_index)
    gid, count, mean, _ = _group_stats(rewards, group_index)
    n = count[gid]
    loo = (rewards - mean[gid]) * n / (n - 1).clamp_min(1)
    return torch.where(n > 1, loo, rewards)


def broadcast_to_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Give every response token its sequence's value: ``A_{i,t} = A_i * mask_{i,t}``.

    Args:
        values: ``[B]`` one value per sequence (e.g. GRPO advantages).
        mask: ``[B, T]`` response mask.

    Returns:
        ``[B, T]``, zero on padding.
    """
    if values.ndim != 1 or mask.ndim != 2 or values.shape[0] != mask.shape[0]:
        raise ValueError(f"values [B] and mask [B, T] expected, got {values.shape}, {mask.shape}")
    return values.unsqueeze(-1) * mask.to(values.dtype)


def outcome_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put each sequence's outcome reward on its last response token (zero elsewhere).

    The token-level reward that GAE discounts back over the response, as veRL's
    ``token_level_rewards`` for an outcome reward model. Rows without response tokens get none.

    Args:
        rewards: ``[B]`` one reward per sequence.
        mask: ``[B, T]`` response mask.

    Returns:
        ``[B, T]``.
    """
    if rewards.ndim != 1 or mask.ndim != 2 or rewards.shape[0] != mask.shape[0]:
        raise ValueError(f"rewards [B] and mask [B, T] expected, got {rewards.shape}, {mask.shape}")
    valid = mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(valid, positions, -1).max(-1).values
    out = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    rows = (last >= 0).nonzero().flatten()
    out[rows, last[rows]] = rewards[rows]
    return out


def _masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` over the masked entries, unbiased var (as veRL)."""
    n = mask.sum()
    if n < 2:
        raise ValueError(
            f"whitening needs at least 2 response tokens in the batch, got {int(n)}; "
            "pass whiten=False for a batch this small"
        )
    x = torch.where(mask, values, 0.0)
    mean = x.sum() / n
    var = torch.where(mask, (values - mean) ** 2, 0.0).sum() / (n - 1)
    return (values - mean) * torch.rsqrt(var + 1e-8)


@torch.no_grad()
def gae_advantages(
    rewards_tokens: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    whiten: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation for PPO with a value head (Schulman et al. 2016).

    Backwards over the response tokens ``t`` of each row::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                       (returns, the value-head target)

    where ``t+1`` is the next *response* token: positions with mask 0 (padding, or tool /
    observation tokens in multi-turn rollouts) are skipped, as in veRL. With ``whiten`` the
    advantages are then normalised over all response tokens of the batch,
    ``(A - mean) / sqrt(var + 1e-8)`` (veRL always does this; returns are not whitened).

    Args:
        rewards_tokens: ``[B, T]`` per-token reward (the outcome reward sits on the last token).
        values: ``[B, T]`` value-head predictions ``V_t`` from the rollout.
        mask: ``[B, T]`` response mask.
        gamma: discount factor.
        lam: GAE lambda.
        whiten: whiten the advantages over the batch (veRL default); needs >= 2 tokens.

    Returns:
        ``(advantages, returns)``, both ``[B, T]`` and zero on masked positions.
    """
    if not (rewards_tokens.shape == values.shape == mask.shape) or rewards_tokens.ndim != 2:
        raise ValueError(
            "rewards_tokens, values and mask must all be [B, T], got "
            f"{tuple(rewards_tokens.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    valid = mask.bool()
    batch, length = rewards_tokens.shape
    next_value = values.new_zeros(batch)
    next_adv = values.new_zeros(batch)
    advantages = torch.zeros_like(values)
    for t in reversed(range(length)):
        delta = rewards_tokens[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        # A masked position passes the next response token's value and advantage through.
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
        advantages[:, t] = next_adv
    returns = advantages + values
    if whiten:
        advantages = _masked_whiten(advantages, valid)
    return torch.where(valid, advantages, 0.0), torch.where(valid, returns, 0.0)


@torch.no_grad()
def dapo_group_filter(rewards: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """DAPO dynamic-sampling filter (Yu et al. 2025): keep groups whose rewards differ.

    A group whose rewards are all equal has GRPO advantage 0 everywhere and so no gradient;
    DAPO drops it and samples more prompts to refill the batch. As veRL's
    ``algorithm.filter_groups``, a group of one is kept.

    Args:
        rewards: ``[N]`` scalar reward (or any per-sequence metric) per sequence.
        group_index: ``[N]`` integer prompt id.

    Returns:
        ``[N]`` bool, True for sequences whose group is kept.
    """
    _check_group_args(rewards, group_index)
    gid, count, _, _ = _group_stats(rewards, group_index)
    empty = rewards.new_zeros(count.shape)
    group_max = empty.scatter_reduce(0, gid, rewards, "amax", include_self=False)
    group_min = empty.scatter_reduce(0, gid, rewards, "amin", include_self=False)
    keep = (group_max > group_min) | (count == 1)
    return keep[gid]


def entropy_shaped_advantages(
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float = 0.4,
    kappa: float = 2.0,
) -> torch.Tensor:
    """Entropy-based advantage shaping (Cheng et al. 2025, "Reasoning with Exploration").

    ``A'_t = A_t + min(alpha * H_t.detach(), |A_t| / kappa)``

    with ``H_t`` the current policy's entropy at token ``t``. The added term is never
    negative, never larger than ``|A_t| / kappa`` (so for ``kappa > 1`` it cannot flip the
    sign of ``A_t``, and it is 0 where ``A_t = 0``) nor than ``alpha * H_t``. The entropy is
    detached: it rescales the update, it adds no gradient of its own (unlike entropy
    regularisation). The paper uses ``alpha=0.4, kappa=2`` for GRPO (0.1 for PPO).

    Args:
        advantages: ``[B, T]`` per-token advantages.
        entropy: ``[B, T]`` per-token entropy of the current policy.
        mask: ``[B, T]`` response mask.
        alpha: entropy scale.
        kappa: clip ratio of the bonus to ``|A|``; must be > 0.

    Returns:
        ``[B, T]`` shaped advantages, zero on padding.
    """
    if kappa <= 0 or alpha < 0:
        raise ValueError(f"need kappa > 0 and alpha >= 0, got kappa={kappa}, alpha={alpha}")
    bonus = torch.minimum(alpha * entropy.detach(), advantages.abs() / kappa)
    return torch.where(mask.bool(), advantages + bonus, 0.0)


# ---------------------------------------------------------------------------------------------
# Registered estimators

ADVANTAGES = Registry("advantage estimator")
register_advantage = ADVANTAGES.register
Estimate = tuple[torch.Tensor, torch.Tensor | None]


@register_advantage("grpo")
def _grpo(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_index: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
) -> Estimate:
    return broadcast_to_tokens(grpo_advantages(rewards, group_index, eps=norm_eps), mask), None


@register_advantage("dr_grpo")
def _dr_grpo(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_index: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
) -> Estimate:
    return broadcast_to_tokens(dr_grpo_advantages(rewards, group_index), mask), None


@register_advantage("rloo")
def _rloo(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_index: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
) -> Estimate:
    return broadcast_to_tokens(rloo_advantages(rewards, group_index), mask), None


@register_advantage("gae", needs_values=True)
def _gae(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_index: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> Estimate:
    """PPO: the outcome reward on the last response token, GAE over a value head's values."""
    if values is None:
        raise ValueError("values: GAE needs the value head's V(s_t)")
    return gae_advantages(
        outcome_token_rewards(rewards, mask),
        values,
        mask,
        gamma=gamma,
        lam=lam,
        whiten=bool(mask.sum() >= 2),
    )
