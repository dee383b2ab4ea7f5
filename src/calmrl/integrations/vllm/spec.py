"""What a vLLM request asks calmrl for, checked once at admission (no vLLM import here).

A request selects a method of calmrl's registry (``calmrl.sampling.methods``) through
``SamplingParams.extra_args``::

    SamplingParams(temperature=1.0, extra_args={"calmrl": {"method": "ead-paper",
                                                           "params": {"tau_min": 0.8},
                                                           "step": 123}})

An OpenAI-API client of ``vllm serve`` cannot nest mappings in ``vllm_xargs`` (its values are
strings, numbers or lists), so there the same mapping travels as a JSON string:
``extra_body={"vllm_xargs": {"calmrl": json.dumps({...})}}``. Requests without the ``calmrl``
key are not touched. Every error is one line naming the key, as calmrl's config errors are.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from calmrl.sampling.entropy_clock import EntropyClockSampler
from calmrl.sampling.methods import Method, make_sampler, method_info
from calmrl.sampling.schedules import ConstantSchedule, EADSchedule, ReverseEADSchedule

KEY = "calmrl"
_FIELDS = ("method", "params", "step")

# Row kinds of the processor's parameter table (``table.py``).
CONSTANT, EAD, REVERSE, ENTROPY = 0, 1, 2, 3


@dataclass(frozen=True)
class RequestSpec:
    """One request's schedule as the numbers the vectorised table stores (float64)."""

    kind: int
    tau: float = 1.0
    tau_max: float = 1.0
    tau_min: float = 1.0
    warmup: float = 0.0
    scale: float = 1.0
    """``time_scale * d_s``: the step's decay, fixed for the request's lifetime."""
    entropy_ref: float = 1.0
    position_weight: float = 1.0


def _fail(key: str, message: str) -> ValueError:
    return ValueError(f"extra_args.{KEY}{key}: {message}")


def unsupported_reason(name: str) -> str | None:
    """Why method ``name`` cannot run inside a vLLM logits processor (None if it can)."""
    info = method_info(name)
    if not info.schedule_based:
        return (
            f"{name!r} reads the model's intermediate hidden states, which a vLLM logits "
            "processor never sees (it gets the final logits only); sample it with the hf backend"
        )
    return None


MIN_P_MESSAGE = (
    "min_p: vLLM applies min-p before calmrl's per-token temperature (at tau = 1), calmrl "
    "after it, so the two would sample different laws; use top_k/top_p with a schedule"
)


def check_method(method: Method) -> None:
    """The config-time check of a method for vLLM: one line, ``method: ...`` or ``min_p: ...``.

    A constant temperature runs as vLLM's own ``temperature`` (no processor), so min-p is
    computed on ``h / tau`` there exactly as calmrl does; with a schedule it cannot be.
    """
    reason = unsupported_reason(method.name)
    if reason:
        raise ValueError(f"method: {reason}")
    if method.min_p and spec_of(method.name, method.params, step=0).kind != CONSTANT:
        raise ValueError(MIN_P_MESSAGE)


def spec_of(name: str, params: dict[str, Any] | None, *, step: int) -> RequestSpec:
    """The table row of a registered method at training step ``step``: the registry builds
    the sampler (so names, parameters and their checks are calmrl's own), this reads it."""
    sampler = make_sampler(name, dict(params or {}))
    schedule = sampler.schedule
    if isinstance(schedule, ConstantSchedule):
        return RequestSpec(CONSTANT, tau=schedule.tau)
    if not isinstance(schedule, EADSchedule | ReverseEADSchedule):
        raise ValueError(f"method: {name!r} has a schedule the vLLM processor cannot host")
    common = {
        "tau_max": schedule.tau_max,
        "tau_min": schedule.tau_min,
        "warmup": float(schedule.warmup_tokens),
        # The same Python float product as schedules._DecaySchedule._growth: equal taus.
        "scale": schedule.time_scale * schedule.decay(step),
    }
    if isinstance(sampler, EntropyClockSampler):
        return RequestSpec(
            ENTROPY,
            entropy_ref=float(sampler.entropy_ref),
            position_weight=float(sampler.position_weight),
            **common,
        )
    return RequestSpec(REVERSE if isinstance(schedule, ReverseEADSchedule) else EAD, **common)


def request_args(method: Method, step: int) -> dict[str, Any]:
    """``SamplingParams.extra_args`` selecting ``method`` at ``step``."""
    return {KEY: {"method": method.name, "params": dict(method.params), "step": int(step)}}


def parse_request(extra_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``calmrl`` mapping of a request (decoded from JSON for ``vllm_xargs``), or None."""
    if not extra_args or KEY not in extra_args:
        return None
    raw = extra_args[KEY]
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise _fail("", "a string here must be a JSON object, e.g. "
                        '\'{"method": "ead-paper", "step": 0}\'') from None  # fmt: skip
    if not isinstance(raw, dict):
        raise _fail("", f"must be a mapping with keys {', '.join(_FIELDS)}, got {raw!r}")
    return raw


def check_request(
    extra_args: dict[str, Any] | None,
    *,
    temperature: float = 1.0,
    min_p: float = 0.0,
) -> RequestSpec | None:
    """Validate one request; None when it does not ask for calmrl. Raises one-line errors."""
    raw = parse_request(extra_args)
    if raw is None:
        return None
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise _fail(f".{unknown[0]}", f"unknown key; allowed: {', '.join(_FIELDS)}")
    name = raw.get("method")
    if not isinstance(name, str):
        raise _fail(".method", f"give a method name, got {name!r}")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise _fail(".params", f"must be a mapping of parameter names, got {params!r}")
    step = raw.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise _fail(".step", f"must be an integer >= 0 (the training step), got {step!r}")
    try:
        reason = unsupported_reason(name)
        if reason:
            raise ValueError(f"method: {reason}")
        spec = spec_of(name, params, step=step)
    except ValueError as error:  # "method: ..." / "params.x: ..." from the registry
        where, _, message = str(error).partition(": ")
        raise _fail(f".{where}", message) from None
    if not math.isclose(temperature, 1.0):
        raise ValueError(
            f"temperature: must be 1.0 with extra_args.{KEY} (its method sets the temperature "
            f"of every token), got {temperature}"
        )
    if min_p and min_p > 0:
        raise ValueError(MIN_P_MESSAGE)
    return spec
