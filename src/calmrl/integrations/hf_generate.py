"""EAD inside Hugging Face ``generate``: a ``LogitsProcessor`` applying a temperature schedule.

It gives the schedule only: HF ``generate`` records no behaviour log-probs, so rollouts that
need TIS come from calmrl's own engine (``calmrl.sampling.generate``).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from calmrl.sampling.schedules import Schedule


class ScheduledTemperatureProcessor(LogitsProcessor):
    """HF ``LogitsProcessor`` applying a per-token temperature schedule inside ``generate``.

    Use with ``do_sample=True, temperature=1.0`` so HF does not rescale again; put top-k/top-p
    in ``generate``'s own arguments (HF applies warpers after custom processors). HF
    ``generate`` advances every row in lock-step, so the position is the number of tokens
    generated so far, taken from the first call's input length unless ``prompt_length`` is given.
    """

    def __init__(self, schedule: Schedule, *, step: int = 0, prompt_length: int | None = None):
        self.schedule = schedule
        self.step = step
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        position = input_ids.shape[1] - self.prompt_length
        positions = torch.full((scores.shape[0],), position, device=scores.device)
        tau = self.schedule.temperatures(positions, self.step).to(scores.dtype)
        return scores / tau.unsqueeze(-1)
