"""Token entropy by position: the "explore early, exploit late" picture of the EAD paper."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

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
