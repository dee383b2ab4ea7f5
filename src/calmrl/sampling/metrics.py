"""Rollout metrics: what was sampled, at which temperature and entropy, and how fast.

Token entropy by position band is the "explore early, exploit late" picture of the EAD paper
(its Figure 1); the trainer logs it every step as ``entropy_by_position/*``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from calmrl.sampling.rollouts import Rollouts

DEFAULT_BANDS: tuple[int, ...] = (0, 16, 32, 64, 128, 256, 512)


def band_labels(bands: Sequence[int] = DEFAULT_BANDS) -> list[str]:
    edges = list(bands)
    return [f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)] + [f"{edges[-1]}+"]


def mean_by_position_band(
    values: torch.Tensor, mask: torch.Tensor, bands: Sequence[int] = DEFAULT_BANDS
) -> dict[str, float]:
    """Masked mean of a per-token quantity [N, T] within position bands; empty bands omitted."""
    positions = torch.arange(values.shape[1], device=values.device)
    edges = [*bands, float("inf")]
    out = {}
    for label, lo, hi in zip(band_labels(bands), edges[:-1], edges[1:], strict=True):
        in_band = mask.bool() & (positions >= lo) & (positions < hi)
        if in_band.any():
            out[label] = float(values[in_band].float().mean())
    return out


def rollout_metrics(rollouts: Rollouts, rewards: torch.Tensor) -> dict[str, float]:
    """Rewards, lengths, entropies and temperatures of one step's rollouts (every sampled row)."""
    mask = rollouts.response_mask
    on = mask.bool()

    def masked(values: torch.Tensor, reduce: str = "mean") -> float:
        return float(getattr(values[on].float(), reduce)()) if on.any() else 0.0

    # Accuracy is the share of positive rewards: exact for the 1/0 and +1/-1 schemes; a
    # format bonus on wrong answers would inflate it (the held-out eval uses the verifier).
    metrics = {
        "reward/mean": float(rewards.mean()),
        "reward/accuracy": float((rewards > 0).float().mean()),
        "response/length_mean": float(rollouts.response_lengths.float().mean()),
        "response/clip_ratio": sum(r == "length" for r in rollouts.finish_reasons)
        / max(1, len(rollouts)),
        "rollout/entropy_mean": masked(rollouts.entropies),
        "rollout/temperature_mean": masked(rollouts.temperatures),
        "rollout/temperature_min": masked(rollouts.temperatures, "min"),
        "rollout/tokens": float(mask.sum()),
    }
    for band, value in mean_by_position_band(rollouts.entropies, mask).items():
        metrics[f"entropy_by_position/{band}"] = value
    return metrics


def throughput(sampled_tokens: float, trained_tokens: float, timings: dict[str, float]) -> dict:
    """Tokens per second of the rollout (all sampled tokens) and of the update (trained ones)."""
    out = {}
    if timings.get("time/rollout"):
        out["perf/rollout_tokens_per_s"] = sampled_tokens / timings["time/rollout"]
    if timings.get("time/update") and trained_tokens:
        out["perf/update_tokens_per_s"] = trained_tokens / timings["time/update"]
    return out
