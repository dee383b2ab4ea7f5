"""Token entropy against the position in the response (EAD, Figure 1): "explore early, exploit
late" — the policy is most uncertain on its first tokens, which motivates annealing from a high
temperature to a low one.

For rollouts sampled at tau = 1, the tau = 1 entropy ``H_t`` of every generated token (the
engine records it) is averaged over the rows that reach position ``t``, with a 95% normal
interval ``mean +- 1.96 sd / sqrt(count)``. The summary gives the least-squares slope of the
mean over positions (nats per token) and the first position whose mean falls below a
threshold.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from calmrl.sampling import Rollouts


@dataclass
class PositionCurve:
    label: str
    mean: list[float]
    lo: list[float]
    hi: list[float]
    count: list[int]

    def summary(self, threshold: float) -> dict[str, float | int | None]:
        """Slope of the mean (nats/token, least squares over positions with >= 2 rows) and the
        first position whose mean is below ``threshold``."""
        points = [
            (t, m) for t, (m, c) in enumerate(zip(self.mean, self.count, strict=True)) if c >= 2
        ]
        slope = None
        if len(points) >= 2:
            x = torch.tensor([p[0] for p in points], dtype=torch.float64)
            y = torch.tensor([p[1] for p in points], dtype=torch.float64)
            slope = float(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum())
        below = next((t for t, m in enumerate(self.mean) if m < threshold), None)
        first = sum(self.mean[:8]) / max(1, len(self.mean[:8]))
        return {"slope": slope, "first_below": below, "mean_first_8": first}


def entropy_by_position(rollouts: Rollouts, label: str = "") -> PositionCurve:
    on = rollouts.response_mask.bool()
    values = torch.where(on, rollouts.entropies.double(), 0.0)
    count = on.sum(0)
    keep = count > 0
    mean = values.sum(0) / count.clamp(min=1)
    var = (torch.where(on, (rollouts.entropies.double() - mean) ** 2, 0.0)).sum(0) / (
        count - 1
    ).clamp(min=1)
    half = 1.96 * var.sqrt() / count.clamp(min=1).sqrt()
    width = int(keep.nonzero().max()) + 1 if keep.any() else 0
    return PositionCurve(
        label,
        mean[:width].tolist(),
        (mean - half)[:width].tolist(),
        (mean + half)[:width].tolist(),
        count[:width].tolist(),
    )


def write_csv(curves: Sequence[PositionCurve], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "position", "mean", "lo", "hi", "count"])
        for c in curves:
            for t, row in enumerate(zip(c.mean, c.lo, c.hi, c.count, strict=True)):
                writer.writerow([c.label, t, *row])


def plot(curves: Sequence[PositionCurve], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The lower panel shows how many rows reach each position: where few do, the mean is noisy.
    fig, (axis, rows) = plt.subplots(
        2, 1, figsize=(7, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for c in curves:
        x = range(len(c.mean))
        (line,) = axis.plot(x, c.mean, label=c.label)
        # Entropy is >= 0: the normal interval's lower end is drawn clipped there.
        axis.fill_between(x, [max(0.0, v) for v in c.lo], c.hi, alpha=0.2, color=line.get_color())
        rows.plot(x, c.count, color=line.get_color())
    axis.set_ylabel("entropy at tau = 1 (nats)\nband: 95% CI")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    rows.set_ylabel("rows")
    rows.set_ylim(bottom=0)
    rows.set_xlabel("position in the response (generated token t)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
