"""``TokenSampler``: turns one decode step's logits into the distribution a token is drawn from.

The engine asks a sampler for the behaviour distribution of each running row, draws the token
itself (``calmrl.sampling.random``) and records the log-prob of the drawn token under that
distribution. A temperature schedule with top-k / top-p / min-p is the common sampler; LED and
the entropy clock plug in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from calmrl.sampling.distributions import sampling_log_probs, validate_truncation
from calmrl.sampling.schedules import Schedule


class TokenSampler(Protocol):
    """Turns one step's logits into the distribution the next token is drawn from."""

    needs_hidden_states: bool

    def reset(self, batch_size: int, device: torch.device) -> None: ...

    def behaviour_log_probs(
        self,
        logits: torch.Tensor,
        positions: torch.Tensor,
        step: int,
        hidden_states: tuple[torch.Tensor, ...] | None,
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``logits`` [R, V] for batch rows ``rows`` -> (log-probs [R, V], temperatures [R])."""
        ...

    def update(self, tokens: torch.Tensor, rows: torch.Tensor, entropies: torch.Tensor) -> None:
        """After sampling ``tokens`` for ``rows``; ``entropies`` is the step's tau = 1 entropy."""
        ...


@dataclass
class TemperatureSampler:
    """Sample from ``softmax(truncate(h / tau_t))`` with ``tau_t`` from a schedule."""

    schedule: Schedule
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    needs_hidden_states: bool = False

    def __post_init__(self) -> None:
        validate_truncation(self.top_k, self.top_p, self.min_p)

    def reset(self, batch_size: int, device: torch.device) -> None:
        pass

    def behaviour_log_probs(
        self,
        logits: torch.Tensor,
        positions: torch.Tensor,
        step: int,
        hidden_states: tuple[torch.Tensor, ...] | None,
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tau = self.schedule.temperatures(positions, step).to(logits.device)
        log_probs = sampling_log_probs(
            logits, tau, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p
        )
        return log_probs, tau

    def update(self, tokens: torch.Tensor, rows: torch.Tensor, entropies: torch.Tensor) -> None:
        pass
