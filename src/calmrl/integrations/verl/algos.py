"""calmrl's estimators and policy losses with veRL 0.9's calling conventions.

Each function here adapts one entry of calmrl's registries (``calmrl.rl.advantages.ADVANTAGES``,
``calmrl.rl.losses.POLICY_LOSSES``) to the arguments veRL passes, so the numbers are calmrl's:

- an estimator gets ``token_level_rewards [B, T], response_mask [B, T], config, index`` (the
  prompt uid of each row) from ``ray_trainer.compute_advantage`` and returns
  ``(advantages, returns)``; veRL routes every estimator except its own ``grpo`` and ``gae``
  through the registry, so ``calmrl_grpo`` reaches it;
- a policy loss gets ``old_log_prob, log_prob, advantages, response_mask, loss_agg_mode,
  config (ActorConfig), rollout_is_weights`` from ``workers/utils/losses.ppo_loss``.

veRL normalises each micro-batch's loss by the *global* batch (``config.global_batch_info``:
``dp_size``, ``batch_num_tokens``, ``global_batch_size``) so that summed micro-batch gradients
equal the global mean; calmrl's ``aggregate`` normalises by the micro-batch itself. The two
differ by one positive factor per micro-batch (``global_scale``), applied to calmrl's loss.

Entropy shaping needs the current policy's entropy, which ``ppo_loss`` has but does not pass
to the policy loss; ``entropy_shaped_ppo_loss`` replaces ``ppo_loss`` as the actor's loss
function (``trainer.py`` installs it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from calmrl.integrations.verl import PREFIX
from calmrl.rl.advantages import ADVANTAGES, entropy_shaped_advantages
from calmrl.rl.losses import POLICY_LOSSES
from calmrl.rl.reductions import masked_mean

# calmrl metric name -> veRL's name for the same quantity (the rest log as actor/calmrl_<name>).
_VERL_METRICS = {
    "vanilla": {
        "clipfrac": "actor/pg_clipfrac",
        "clipfrac_lower": "actor/pg_clipfrac_lower",
        "approx_kl": "actor/ppo_kl",
    },
    "clip_cov": {"clipfrac": "actor/pg_clipfrac", "approx_kl": "actor/ppo_kl"},
    "kl_cov": {"kl_abs": "actor/ppo_kl"},  # veRL's ppo_kl for kl_cov is the mean |log ratio|
}


def estimator_names() -> list[str]:
    """calmrl's estimators veRL can call: those that need no value head (veRL hands a
    registered estimator no values; PPO with GAE stays veRL's ``gae``)."""
    return [n for n in ADVANTAGES.names() if not ADVANTAGES.trait(n, "needs_values", False)]


def policy_loss_names() -> list[str]:
    return POLICY_LOSSES.names()


def group_ids(index: Iterable[Any]) -> torch.Tensor:
    """Dense integer group ids from veRL's uids (strings), in order of first appearance."""
    ids: dict[Any, int] = {}
    return torch.tensor([ids.setdefault(uid, len(ids)) for uid in index], dtype=torch.long)


def _get(config: Any, key: str, default: Any) -> Any:
    value = config.get(key, default) if config is not None else default
    return default if value is None else value


def make_estimator(name: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """veRL estimator running calmrl's ``name`` on each row's summed token-level reward."""

    def estimator(
        token_level_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        config: Any = None,
        index: Any = None,
        **_unused: Any,  # reward_baselines and the like, which calmrl's estimators do not use
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if index is None:
            raise ValueError(f"{PREFIX}{name}: needs veRL's uid index to form the groups")
        scores = token_level_rewards.sum(dim=-1)
        groups = group_ids(index).to(scores.device)
        chosen = name
        # veRL's grpo reads this switch; honour it so calmrl_grpo is a drop-in replacement.
        if name == "grpo" and not _get(config, "norm_adv_by_std_in_grpo", True):
            chosen = "dr_grpo"
        advantages, _ = ADVANTAGES.call(chosen, scores, response_mask, groups, options={})
        return advantages, advantages  # outcome estimators: returns = advantages, as veRL

    estimator.__name__ = estimator.__qualname__ = f"{PREFIX}{name}"
    return estimator


def loss_options(config: Any) -> dict[str, Any]:
    """calmrl's loss options from veRL's ActorConfig, with veRL's own fallbacks."""
    clip = _get(config, "clip_ratio", 0.2)
    policy = _get(config, "policy_loss", {})
    return {
        "clip_low": _get(config, "clip_ratio_low", clip),
        "clip_high": _get(config, "clip_ratio_high", clip),
        "clip_ratio_c": _get(config, "clip_ratio_c", 3.0),
        "clip_cov_ratio": _get(policy, "clip_cov_ratio", 2e-4),
        "clip_cov_lb": _get(policy, "clip_cov_lb", 1.0),
        "clip_cov_ub": _get(policy, "clip_cov_ub", 5.0),
        "kl_cov_ratio": _get(policy, "kl_cov_ratio", 2e-4),
        "ppo_kl_coef": _get(policy, "ppo_kl_coef", 1.0),
    }


def global_scale(mask: torch.Tensor, agg: str, info: Mapping[str, Any]) -> torch.Tensor | float:
    """Factor turning calmrl's micro-batch aggregate into veRL's ``agg_loss`` with global info.

    With ``n`` this micro-batch's response tokens, ``S`` its non-empty rows and ``dp`` the
    data-parallel size: ``token-mean`` ``n * dp / batch_num_tokens``; ``token-sum`` ``dp``;
    the ``seq-mean-*`` modes ``S * dp / global_batch_size``. Without global info (``dp = 1``,
    counts None) veRL normalises by the micro-batch too and the factor is 1. veRL's
    ``seq-mean-token-mean`` divides each row by ``n_i + 1e-8``, calmrl by ``n_i`` (a relative
    difference of at most 1e-8).
    """
    dp = int(info.get("dp_size") or 1)
    if agg == "token-sum":
        return float(dp)
    key = "batch_num_tokens" if agg == "token-mean" else "global_batch_size"
    total = info.get(key)
    if total is None:
        if dp > 1:
            raise ValueError(f"{key} is required when dp_size > 1 (loss_agg_mode={agg})")
        return 1.0
    valid = mask.bool()
    local = valid.sum() if agg == "token-mean" else valid.any(dim=-1).sum()
    return local.to(torch.float32) * dp / float(total)


def make_policy_loss(name: str) -> Callable[..., tuple[torch.Tensor, dict[str, float]]]:
    """veRL policy loss computing calmrl's ``name`` (TIS = veRL's ``rollout_is_weights``)."""
    aliases = _VERL_METRICS.get(name, {})

    def policy_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if config is None:
            raise ValueError(f"{PREFIX}{name}: needs the actor config (clip ratios, loss options)")
        info = dict(_get(config, "global_batch_info", {}))
        options = {**loss_options(config), "loss_scale_factor": info.get("loss_scale_factor")}
        loss, metrics = POLICY_LOSSES.call(
            name,
            log_prob,
            old_log_prob,
            advantages,
            response_mask,
            options=options,
            agg=loss_agg_mode,
            tis_weights=rollout_is_weights,
        )
        loss = loss * global_scale(response_mask, loss_agg_mode, info)
        return loss, {aliases.get(k, f"actor/calmrl_{k}"): float(v) for k, v in metrics.items()}

    policy_loss.__name__ = policy_loss.__qualname__ = f"{PREFIX}{name}"
    return policy_loss


def shaped_advantages_like(advantages: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
    """``padded`` ``[B, L]`` in the layout of ``advantages``: dense, or jagged (nested) rows."""
    if not advantages.is_nested:
        return padded
    lengths = advantages.offsets().diff().tolist()
    values = torch.cat([padded[row, :length] for row, length in enumerate(lengths)])
    # A clone keeps the jagged layout's metadata (its cached max length, which TensorDict's
    # to_padded_tensor reads); a tensor rebuilt from the offsets would lose it.
    shaped = advantages.detach().clone()
    shaped.values().copy_(values)
    return shaped


def entropy_shaped_ppo_loss(
    config: Any,
    model_output: Mapping[str, Any],
    data: Any,
    dp_group: Any = None,
    *,
    alpha: float = 0.4,
    kappa: float = 2.0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """veRL's ``ppo_loss`` on advantages shaped by the current policy's entropy (Cheng et al.).

    ``A' = A + min(alpha * H.detach(), |A| / kappa)`` (``calmrl.rl.advantages.
    entropy_shaped_advantages``) with ``H`` from this forward (``model_output["entropy"]``,
    present when ``actor.calculate_entropy=true``), as calmrl's own update does: recomputed on
    every micro-batch and PPO epoch. Everything else, the policy loss of ``loss_mode``, TIS,
    entropy and KL terms, is veRL's ``ppo_loss`` unchanged.
    """
    from verl.workers.utils.losses import ppo_loss
    from verl.workers.utils.padding import no_padding_2_padding

    entropy = model_output.get("entropy")
    if entropy is None:
        raise ValueError(
            "entropy shaping: the actor forward returned no entropy; set "
            "actor_rollout_ref.actor.calculate_entropy=true"
        )
    entropy = no_padding_2_padding(entropy, data)
    # The same padded view of the advantages that ppo_loss itself takes.
    padded = data.select("advantages", "response_mask").to_padded_tensor()
    mask = padded["response_mask"].bool()
    shaped = entropy_shaped_advantages(
        padded["advantages"], entropy, mask, alpha=alpha, kappa=kappa
    )
    shaped_data = data.copy()  # shallow: only the advantages entry is replaced
    shaped_data["advantages"] = shaped_advantages_like(data["advantages"], shaped)
    loss, metrics = ppo_loss(config, model_output, shaped_data, dp_group)
    bonus = masked_mean(shaped - padded["advantages"], mask)
    return loss, {**metrics, "actor/calmrl_entropy_bonus": float(bonus)}
