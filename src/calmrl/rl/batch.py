"""One step's training data: the prompt order, advantages, pi_old and TIS weights per token.

``PromptStream`` is the resumable order over the training problems; ``make_batch`` turns
scored rollouts into a ``Batch`` with the registered advantage estimator and the truncated
importance weights of the behaviour log-probs the backend recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from calmrl.data import Problem
from calmrl.rl.advantages import ADVANTAGES, dapo_group_filter
from calmrl.rl.forward import ResponseForward
from calmrl.rl.importance import tis_stats, tis_weights
from calmrl.rl.losses import top_entropy_mask
from calmrl.sampling.rollouts import Rollouts


@dataclass
class PromptStream:
    """Deterministic, resumable order over the training problems: a fresh permutation each epoch.

    ``take`` returns the problems with their position in the stream, a global index that
    names each drawn prompt uniquely (the per-row random streams are seeded by it)."""

    problems: list[Problem]
    seed: int
    cursor: int = 0
    _orders: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def take(self, count: int) -> tuple[list[Problem], list[int]]:
        out, indices = [], []
        for _ in range(count):
            epoch, index = divmod(self.cursor, len(self.problems))
            out.append(self.problems[int(self._order(epoch)[index])])
            indices.append(self.cursor)
            self.cursor += 1
        return out, indices

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:  # derived from (seed, epoch): nothing to checkpoint
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(len(self.problems), generator=generator)}
        return self._orders[epoch]


@dataclass
class Batch:
    """One step's training data, on the model's device."""

    rollouts: Rollouts
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N, T]
    old_logprobs: torch.Tensor  # [N, T]
    tis_weights: torch.Tensor | None  # [N, T]
    metrics: dict[str, float] = field(default_factory=dict)
    old_values: torch.Tensor | None = None  # [N, T], GAE only
    returns: torch.Tensor | None = None  # [N, T], GAE only
    row_keys: torch.Tensor | None = None  # [N] global identity: stream index * n + sample
    forking_mask: torch.Tensor | None = None  # [N, T] top-entropy tokens (top_entropy_quantile)

    def loss_weights(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Per-token weights of the policy loss: TIS weights times the forking-token mask."""
        weights = self.tis_weights[rows] if self.tis_weights is not None else None
        if self.forking_mask is not None:
            forking = self.forking_mask[rows].to(self.advantages.dtype)
            weights = forking if weights is None else weights * forking
        return weights


class BatchSettings(Protocol):
    """What ``make_batch`` reads from the algorithm config (``calmrl.config.AlgorithmConfig``)."""

    advantage: str
    tis: bool
    tis_cap: float
    tis_level: str
    tis_mode: str
    recompute_old_logprobs: bool
    top_entropy_quantile: float

    def model_dump(self) -> dict[str, Any]: ...


def informative_rows(
    rewards: torch.Tensor, group_index: torch.Tensor, dynamic: bool
) -> torch.Tensor:
    """Rows to train on: all, or with DAPO dynamic sampling those of groups whose rewards differ."""
    if not dynamic:
        return torch.arange(len(rewards))
    return dapo_group_filter(rewards, group_index)[group_index].nonzero().flatten()


def regroup(rollouts: Rollouts, offset: int) -> Rollouts:
    """Renumber group indices 0..k-1 (plus offset) after some groups were dropped."""
    _, dense = torch.unique(rollouts.group_index, sorted=True, return_inverse=True)
    rollouts.group_index = dense + offset
    return rollouts


def make_batch(
    rollouts: Rollouts,
    rewards: torch.Tensor,
    settings: BatchSettings,
    *,
    forward: ResponseForward | None = None,
    metrics: dict[str, float] | None = None,
    row_keys: torch.Tensor | None = None,
    reduce: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Batch:
    """Advantages, pi_old and TIS weights of scored rollouts.

    ``forward`` is a no-grad pass of the current policy over the rollouts, needed when pi_old
    is recomputed or the estimator needs values (GAE); otherwise pi_old is the backend's tau = 1
    log-probs, recorded for free while sampling. ``reduce`` sums the TIS totals over ranks
    (``{"max": ...}`` by maximum), so the logged statistics are the global ones; ``gather``
    concatenates a tensor over ranks (the forking tokens are ranked over the global batch, by
    the rollout-time tau = 1 entropy).
    """
    metrics = dict(metrics or {})
    mask = rollouts.response_mask
    old_logprobs = rollouts.logprobs
    if settings.recompute_old_logprobs:
        if forward is None:
            raise ValueError("forward: recompute_old_logprobs needs the policy's forward pass")
        old_logprobs = forward.logprobs
        metrics["old_logprob_abs_diff_max"] = float(
            ((old_logprobs - rollouts.logprobs).abs() * mask).max()
        )
    values = forward.values if forward is not None else None
    advantages, returns = ADVANTAGES.call(
        settings.advantage,
        rewards,
        mask,
        rollouts.group_index,
        options=settings.model_dump(),
        values=values,
    )
    if returns is not None:
        metrics.update(critic_metrics(values, returns, mask))
    weights = None
    if settings.tis:
        weights, diagnostics = tis_weights(
            old_logprobs,
            rollouts.behaviour_logprobs,
            mask,
            cap=settings.tis_cap,
            level=settings.tis_level,
            mode=settings.tis_mode,
        )
        totals = {k.removeprefix("totals/"): v for k, v in diagnostics.items() if "/" in k}
        stats = tis_stats(reduce(totals) if reduce is not None else totals)
        metrics.update({f"tis/{k.removeprefix('tis_')}": float(v) for k, v in stats.items()})
    forking = None
    if settings.top_entropy_quantile < 1.0:
        entropies = rollouts.entropies[mask.bool()]
        ranked = gather(entropies) if gather is not None else entropies
        forking = top_entropy_mask(
            rollouts.entropies, mask, settings.top_entropy_quantile, values=ranked
        )
        metrics["actor/forking_threshold"] = float(
            rollouts.entropies[forking].min() if forking.any() else 0.0
        )
    if row_keys is None:
        row_keys = torch.arange(len(rollouts))
    return Batch(
        rollouts, rewards, advantages, old_logprobs, weights, metrics, values, returns,
        row_keys, forking,
    )  # fmt: skip


def critic_metrics(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Rollout-time value statistics; explained variance ``1 - Var(R - V) / Var(R)`` as veRL."""
    on = mask.bool()
    v, r = values[on], returns[on]
    variance = float(r.var()) if len(r) > 1 else 0.0
    explained = 1.0 - float((r - v).var()) / variance if variance > 0 else 0.0
    return {
        "critic/values_mean": float(v.mean()) if len(v) else 0.0,
        "critic/returns_mean": float(r.mean()) if len(r) else 0.0,
        "critic/explained_var": explained,
    }
