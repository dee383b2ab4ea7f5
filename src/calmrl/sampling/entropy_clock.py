"""Entropy-clocked EAD: annealing that advances with the uncertainty a rollout has spent.

EAD (section 4 of the paper) anneals with the token position, ``tau_t = max(1 + tau_max -
exp(t / d_s), tau_min)``, so a rollout spends its high-temperature budget on its first few
tokens whatever they are, often boilerplate ("To find the sum, ..."). The paper's section 7
names a schedule driven by the model's entropy as future work. This one replaces the position
``t`` by an *entropy clock*, the policy's tau = 1 entropy accumulated over the prefix, measured
in units of a reference entropy::

    clock_t = sum_{s < t} [w + (1 - w) H_s / H_ref]    H_s: entropy of pi(. | y_<s) at tau = 1
    tau_t   = 1                                  for t < c (the warm-up, in tokens, as EAD)
    tau_t   = max(1 + tau_max - exp(clock_t / d_s), tau_min)   otherwise

With ``w = position_weight = 0`` near-deterministic tokens (``H ~ 0``) leave the clock where it
is, so exploration is kept for the first tokens where the model is actually uncertain; a rollout
whose every token has entropy ``H_ref`` gets exactly EAD's temperatures, and so does any rollout
with ``w = 1``. In between, the clock always advances by at least ``w`` per token, so a long
near-certain stretch (e.g. copying the answer) still anneals. ``tau_t`` depends only on the
prefix, so the behaviour policy is still autoregressive and the engine's behaviour log-probs
stay exact (TIS applies unchanged). The step-aware decay ``d_s`` and every EAD parameter carry
over; ``entropy_ref`` should be near the model's mean token entropy (the trainer logs it as
``rollout/entropy_mean``): smaller anneals faster than EAD, larger slower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from calmrl.sampling.distributions import sampling_log_probs, validate_truncation
from calmrl.sampling.schedules import EADSchedule


@dataclass
class EntropyClockSampler:
    schedule: EADSchedule = field(default_factory=EADSchedule)
    entropy_ref: float = 1.0
    position_weight: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    needs_hidden_states: bool = False
    _clock: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        ref = self.entropy_ref
        if isinstance(ref, bool) or not isinstance(ref, int | float) or not 0 < ref < math.inf:
            raise ValueError(
                f"params.entropy_ref: must be a positive number of nats, got {self.entropy_ref}"
            )
        w = self.position_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 1:
            raise ValueError(f"params.position_weight: must lie in [0, 1], got {w}")
        validate_truncation(self.top_k, self.top_p, self.min_p)

    def reset(self, batch_size: int, device: torch.device) -> None:
        self._clock = torch.zeros(batch_size, dtype=torch.float64, device=device)

    def behaviour_log_probs(
        self,
        logits: torch.Tensor,
        positions: torch.Tensor,
        step: int,
        hidden_states: tuple[torch.Tensor, ...] | None,
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._clock is None:
            raise RuntimeError("EntropyClockSampler: call reset() before sampling")
        annealed = self.schedule.annealed(self._clock[rows], step)
        warm = positions.to(annealed.device) < self.schedule.warmup_tokens
        tau = torch.where(warm, torch.ones_like(annealed), annealed).float().to(logits.device)
        log_probs = sampling_log_probs(
            logits, tau, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p
        )
        return log_probs, tau

    def update(self, tokens: torch.Tensor, rows: torch.Tensor, entropies: torch.Tensor) -> None:
        # The engine's tau = 1 entropy of this step: the clock needs no softmax of its own.
        w = self.position_weight
        self._clock[rows] += w + (1 - w) * entropies.to(self._clock) / self.entropy_ref
