"""Importance weights against the sampling schedule (EAD, appendix B): when does TIS matter?

For each schedule, sample rollouts with exact behaviour log-probs ``log mu`` and the policy's
``log pi`` (tau = 1) of every token, and report the importance weights ``rho = pi / mu``:

- token level, ``rho_t = exp(log pi_t - log mu_t)`` over all response tokens;
- sequence level, ``rho = exp(sum_t (log pi_t - log mu_t))`` per row;
- for each: mean, variance and the fraction above the TIS cap of the weights (log-ratio
  clamped to +-20, as TIS does), and Kish's effective sample size
  ``ESS = (sum rho)^2 / (n sum rho^2)`` as a fraction of n, computed from the unclamped log
  weights with log-sum-exp: ESS is scale-invariant, so sequences whose weights all underflow
  (hundreds of tokens at a low temperature) still get their true ESS instead of 0/0, and the
  clamp cannot make unequal weights look equal.

At tau = 1 every weight is 1 (ESS 1); the further a schedule's temperatures move from 1, the
larger the variance and the smaller the ESS: the regime where truncation changes the update.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from calmrl.sampling import Method, RolloutBackend, Rollouts

LOG_RATIO_BOUND = 20.0


@dataclass
class WeightStats:
    schedule: str
    level: str  # "token" or "sequence"
    units: int
    mean: float
    variance: float
    ess: float  # fraction of units, in (0, 1]
    frac_above_cap: float
    temperature_mean: float


def weight_stats(log_rho: torch.Tensor, cap: float) -> dict[str, float]:
    """Mean, variance, Kish ESS / n and the share above ``cap`` of 1-D weights given by their
    logs ``log_rho``."""
    log_rho = log_rho.double()
    n = log_rho.numel()
    if n == 0:
        return {"units": 0, "mean": 0.0, "variance": 0.0, "ess": 0.0, "frac_above_cap": 0.0}
    rho = log_rho.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()
    log_ess = 2 * log_rho.logsumexp(0) - (2 * log_rho).logsumexp(0) - math.log(n)
    return {
        "units": n,
        "mean": float(rho.mean()),
        "variance": float(rho.var(correction=0)),
        "ess": float(log_ess.exp()),
        "frac_above_cap": float((rho > cap).double().mean()),
    }


def log_importance_weights(rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
    """``log rho`` of every response token, and of every row (the sum over its tokens)."""
    on = rollouts.response_mask.bool()
    log_ratio = torch.where(on, rollouts.logprobs - rollouts.behaviour_logprobs, 0.0)
    return log_ratio[on], log_ratio.sum(-1)[on.any(-1)]


def is_variance(
    backend: RolloutBackend,
    prompts: Sequence[str],
    schedules: Sequence[tuple[str, Method]],
    *,
    n: int,
    max_new_tokens: int,
    seed: int = 0,
    cap: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> list[WeightStats]:
    """Two rows (token, sequence) per schedule; the same prompts and seed for every schedule."""
    rows = []
    for label, method in schedules:
        rollouts = backend.generate(prompts, method, n=n, max_new_tokens=max_new_tokens, seed=seed)
        on = rollouts.response_mask.bool()
        temperature = float(rollouts.temperatures[on].mean()) if on.any() else 0.0
        for level, log_rho in zip(
            ("token", "sequence"), log_importance_weights(rollouts), strict=True
        ):
            stats = weight_stats(log_rho, cap)
            rows.append(WeightStats(label, level, **stats, temperature_mean=temperature))
        if callable(progress):
            progress(label)
    return rows


def write_csv(rows: Sequence[WeightStats], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def plot(rows: Sequence[WeightStats], path: Path, *, title: str, cap: float) -> None:
    """ESS and the share above the cap per schedule, token and sequence level side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r.schedule for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for level, offset in (("token", -0.2), ("sequence", 0.2)):
        part = {r.schedule: r for r in rows if r.level == level}
        x = [i + offset for i in range(len(labels))]
        axes[0].bar(x, [part[s].ess for s in labels], width=0.4, label=level)
        axes[1].bar(x, [part[s].frac_above_cap for s in labels], width=0.4, label=level)
    axes[0].set_ylabel("effective sample size / n")
    axes[1].set_ylabel(f"fraction of weights > cap {cap:g}")
    for axis in axes:
        axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        axis.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
