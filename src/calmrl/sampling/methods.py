"""Sampling methods by name, so the CLI, the evaluator and the trainer build them one way."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from calmrl.sampling.engine import TemperatureSampler, TokenSampler
from calmrl.schedules import make_schedule


def make_sampler(
    method: str,
    params: dict[str, Any] | None = None,
    *,
    model: PreTrainedModel | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> TokenSampler:
    """``method`` is a schedule preset or kind (``constant``, ``ead``, ``ead-paper``, ...) or
    ``led``; ``params`` are its parameters (``tau`` for constant, ``tau_max``... for EAD)."""
    params = dict(params or {})
    if method == "led":
        from calmrl.sampling.led import LEDSampler

        if model is None:
            raise ValueError("method: 'led' needs the model to read its layers")
        return LEDSampler.for_model(model, **params)
    schedule = make_schedule(method, **params)
    return TemperatureSampler(schedule, top_k=top_k, top_p=top_p, min_p=min_p)
