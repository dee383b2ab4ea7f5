"""Rollout metrics: what was sampled, at which temperature and entropy, and how fast.

Token entropy by position band is the "explore early, exploit late" picture of the EAD paper
(its Figure 1); the trainer logs it every step as ``entropy_by_position/*``.
"""

from __future__ import annotations

import itertools
import math
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


def rollout_totals(rollouts: Rollouts, rewards: torch.Tensor) -> dict[str, float]:
    """Sums and counts behind ``rollout_metrics``: they add up over ranks (``*_min`` take the
    minimum), so the metrics of N ranks are those of one process with all the rows."""
    mask = rollouts.response_mask
    on = mask.bool()
    temperatures = rollouts.temperatures[on].float()
    totals = {
        "rows": float(len(rollouts)),
        "reward_sum": float(rewards.sum()),
        # Accuracy is the share of positive rewards: exact for the 1/0 and +1/-1 schemes; a
        # format bonus on wrong answers would inflate it (the held-out eval uses the verifier).
        "positive": float((rewards > 0).sum()),
        "clipped": float(sum(r == "length" for r in rollouts.finish_reasons)),
        "tokens": float(mask.sum()),
        "entropy_sum": float(rollouts.entropies[on].float().sum()),
        "temperature_sum": float(temperatures.sum()),
        "temperature_min": float(temperatures.min()) if len(temperatures) else math.inf,
    }
    positions = torch.arange(mask.shape[1], device=mask.device)
    edges = [*DEFAULT_BANDS, math.inf]
    for label, lo, hi in zip(band_labels(), edges[:-1], edges[1:], strict=True):
        in_band = on & (positions >= lo) & (positions < hi)
        totals[f"band_tokens/{label}"] = float(in_band.sum())
        totals[f"band_entropy/{label}"] = float(rollouts.entropies[in_band].float().sum())
    return totals


def metrics_from_totals(totals: dict[str, float]) -> dict[str, float]:
    rows, tokens = max(totals["rows"], 1.0), totals["tokens"]
    metrics = {
        "reward/mean": totals["reward_sum"] / rows,
        "reward/accuracy": totals["positive"] / rows,
        "response/length_mean": tokens / rows,
        "response/clip_ratio": totals["clipped"] / rows,
        "rollout/entropy_mean": totals["entropy_sum"] / tokens if tokens else 0.0,
        "rollout/temperature_mean": totals["temperature_sum"] / tokens if tokens else 0.0,
        "rollout/temperature_min": totals["temperature_min"] if tokens else 0.0,
        "rollout/tokens": tokens,
    }
    for label in band_labels():
        if totals[f"band_tokens/{label}"]:
            mean = totals[f"band_entropy/{label}"] / totals[f"band_tokens/{label}"]
            metrics[f"entropy_by_position/{label}"] = mean
    return metrics


def rollout_metrics(rollouts: Rollouts, rewards: torch.Tensor) -> dict[str, float]:
    """Rewards, lengths, entropies and temperatures of one step's rollouts (every sampled row)."""
    return metrics_from_totals(rollout_totals(rollouts, rewards))


def throughput(sampled_tokens: float, trained_tokens: float, timings: dict[str, float]) -> dict:
    """Tokens per second of the rollout (all sampled tokens) and of the update (trained ones)."""
    out = {}
    if timings.get("time/rollout"):
        out["perf/rollout_tokens_per_s"] = sampled_tokens / timings["time/rollout"]
    if timings.get("time/update") and trained_tokens:
        out["perf/update_tokens_per_s"] = trained_tokens / timings["time/update"]
    return out
