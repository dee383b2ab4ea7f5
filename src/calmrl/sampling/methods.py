"""Sampling methods by name, so the CLI, the evaluator and the trainer build them one way."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from transformers import PreTrainedModel

from calmrl.sampling.engine import TemperatureSampler, TokenSampler
from calmrl.sampling.entropy_clock import EntropyClockSampler
from calmrl.schedules import EADSchedule, make_schedule, schedule_names

ENTROPY_CLOCK = "ead-entropy"


def make_sampler(
    method: str,
    params: dict[str, Any] | None = None,
    *,
    model: PreTrainedModel | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> TokenSampler:
    """``method`` is a schedule preset or kind (``constant``, ``ead``, ``ead-paper``, ...),
    ``ead-entropy`` (EAD on an entropy clock) or ``led``; ``params`` are its parameters (``tau``
    for constant, ``tau_max``... for EAD, those and ``entropy_ref`` for ead-entropy)."""
    params = dict(params or {})
    if method == "led":
        from calmrl.sampling.led import LEDSampler

        if model is None:
            raise ValueError("method: 'led' needs the model to read its layers")
        return LEDSampler.for_model(model, **params)
    if method == ENTROPY_CLOCK:
        known = sorted({f.name for f in fields(EADSchedule)} | {"entropy_ref", "position_weight"})
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(
                f"schedule.{unknown[0]}: not a parameter of {method!r}; allowed: {', '.join(known)}"
            )
        clock = {k: params.pop(k) for k in ("entropy_ref", "position_weight") if k in params}
        return EntropyClockSampler(
            make_schedule("ead-paper", **params),
            **clock,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
        )
    if method not in schedule_names():
        allowed = ", ".join([*schedule_names(), ENTROPY_CLOCK, "led"])
        raise ValueError(f"schedule.name: unknown method {method!r}; choose one of: {allowed}")
    schedule = make_schedule(method, **params)
    return TemperatureSampler(schedule, top_k=top_k, top_p=top_p, min_p=min_p)
