"""Per-token temperature schedules for rollouts (``docs/algorithms.md``, "Schedules").

Every schedule maps a tensor of 0-based generated-token positions ``t`` (prompt excluded) and
the global training step ``s`` to a tensor of temperatures of the same shape, so one batch can
mix rows that are at different positions.

EAD, "Let it Calm: Exploratory Annealed Decoding for Verifiable RL" (section 4)::

    tau_t = 1.0                                              for t < c        (warm-up)
    tau_t = max(1 + tau_max - exp(t / (k * d_s)), tau_min)   for t >= c
    d_s   = min(d0 + alpha * s, d_max)                       (step-aware decay)

``k`` is ``time_scale``: 1 in the paper, 20 in the authors' released veRL fork
(``exp(t / (20 * d_s))``), which we expose as the ``ead-official`` preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import torch


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"params.{field}: {message}")


@runtime_checkable
class Schedule(Protocol):
    """What the engine needs from a temperature schedule."""

    def temperatures(self, positions: torch.Tensor, step: int = 0) -> torch.Tensor: ...

    def decay(self, step: int = 0) -> float: ...


@dataclass(frozen=True)
class ConstantSchedule:
    """``tau_t = tau`` for every position: the usual fixed-temperature sampling."""

    tau: float = 1.0

    def __post_init__(self) -> None:
        _require(math.isfinite(self.tau) and self.tau > 0, "tau", f"must be > 0, got {self.tau}")

    def decay(self, step: int = 0) -> float:
        return math.inf

    def temperatures(self, positions: torch.Tensor, step: int = 0) -> torch.Tensor:
        return torch.full(positions.shape, self.tau, dtype=torch.float32, device=positions.device)


@dataclass(frozen=True)
class _DecaySchedule:
    tau_max: float = 1.2
    tau_min: float = 0.1
    d0: float = 25.0
    alpha: float = 5.0
    d_max: float = 40000.0
    warmup_tokens: int = 10
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            _require(math.isfinite(value), f.name, f"must be finite, got {value}")
        _require(self.tau_min > 0, "tau_min", f"must be > 0, got {self.tau_min}")
        _require(
            self.tau_max >= self.tau_min,
            "tau_max",
            f"must be >= tau_min ({self.tau_min}), got {self.tau_max}",
        )
        _require(self.d0 > 0, "d0", f"must be > 0, got {self.d0}")
        _require(self.alpha >= 0, "alpha", f"must be >= 0, got {self.alpha}")
        _require(self.d_max >= self.d0, "d_max", f"must be >= d0 ({self.d0}), got {self.d_max}")
        _require(
            self.warmup_tokens >= 0,
            "warmup_tokens",
            f"must be >= 0, got {self.warmup_tokens}",
        )
        _require(self.time_scale > 0, "time_scale", f"must be > 0, got {self.time_scale}")

    def decay(self, step: int = 0) -> float:
        """Step-aware decay ``d_s = min(d0 + alpha * s, d_max)``."""
        _require(step >= 0, "step", f"must be >= 0, got {step}")
        return min(self.d0 + self.alpha * step, self.d_max)

    def _growth(self, positions: torch.Tensor, step: int) -> torch.Tensor:
        scale = self.time_scale * self.decay(step)
        # float64 keeps exp() exact enough near the floor; clamp avoids inf for huge t.
        exponent = (positions.to(torch.float64) / scale).clamp(max=700.0)
        return torch.exp(exponent)


@dataclass(frozen=True)
class EADSchedule(_DecaySchedule):
    """Exploratory annealed decoding: explore early (tau_max), exploit late (tau_min)."""

    def temperatures(self, positions: torch.Tensor, step: int = 0) -> torch.Tensor:
        annealed = self.annealed(positions, step)
        tau = torch.where(positions < self.warmup_tokens, torch.ones_like(annealed), annealed)
        return tau.to(torch.float32)

    def annealed(self, clock: torch.Tensor, step: int = 0) -> torch.Tensor:
        """``max(1 + tau_max - exp(clock / d_s), tau_min)`` without the warm-up (float64);
        ``clock`` is the token position for EAD, or any non-negative time (entropy clock)."""
        return (1.0 + self.tau_max - self._growth(clock, step)).clamp(min=self.tau_min)


@dataclass(frozen=True)
class ReverseEADSchedule(_DecaySchedule):
    """Ablation: ``tau_t = min(tau_min + exp(t / d_s), tau_max)`` — exploit early, explore late."""

    def temperatures(self, positions: torch.Tensor, step: int = 0) -> torch.Tensor:
        annealed = (self.tau_min + self._growth(positions, step)).clamp(max=self.tau_max)
        tau = torch.where(positions < self.warmup_tokens, torch.ones_like(annealed), annealed)
        return tau.to(torch.float32)


PRESETS: dict[str, Schedule] = {
    # Paper, section 4 (1-1.5B models) and its inference-time figure.
    "ead-paper": EADSchedule(),
    # The authors' released code: the same parameters with a hidden x20 time scale.
    "ead-official": EADSchedule(time_scale=20.0),
    # Paper setting for 7B models.
    "ead-paper-7b": EADSchedule(tau_min=0.8),
    "reverse-ead": ReverseEADSchedule(),
    "constant": ConstantSchedule(1.0),
}

_KINDS = {"constant": ConstantSchedule, "ead": EADSchedule, "reverse-ead": ReverseEADSchedule}


def schedule_names() -> list[str]:
    """Every name ``make_schedule`` accepts: the presets and the kinds."""
    return sorted({*PRESETS, *_KINDS})


def make_schedule(name: str = "constant", **params: float) -> Schedule:
    """Build a schedule from a preset name or a kind (``constant``, ``ead``, ``reverse-ead``).

    Parameters given explicitly override the preset's.
    """
    if name in _KINDS:
        kind, base = _KINDS[name], {}
    elif name in PRESETS:
        preset = PRESETS[name]
        kind = type(preset)
        base = {f.name: getattr(preset, f.name) for f in fields(preset)}  # type: ignore[arg-type]
    else:
        allowed = ", ".join(schedule_names())
        raise ValueError(f"method: unknown schedule {name!r}; choose one of: {allowed}")
    known = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    for key in params:
        if key not in known:
            raise ValueError(
                f"params.{key}: not a parameter of {name!r}; allowed: {', '.join(sorted(known))}"
            )
    return kind(**{**base, **params})
