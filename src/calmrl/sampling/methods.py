"""The registry of sampling methods: one place that knows every method's name and parameters.

The config, the CLI, the evaluator and every rollout backend validate a method with
``validate_method`` and build it with ``make_sampler``. A method is registered once with
``register_method``; its parameters are the fields of the object it builds.

- every temperature schedule preset or kind (``constant``, ``ead``, ``ead-paper``,
  ``ead-paper-7b``, ``ead-official``, ``reverse-ead``; ``calmrl.sampling.schedules``);
- ``ead-entropy``: EAD on an entropy clock (``calmrl.sampling.entropy_clock``);
- ``led``: latent exploration decoding (``calmrl.sampling.led``); it reads the model's layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import PreTrainedModel

from calmrl.sampling.distributions import validate_truncation
from calmrl.sampling.entropy_clock import EntropyClockSampler
from calmrl.sampling.led import LEDSampler
from calmrl.sampling.samplers import TemperatureSampler, TokenSampler
from calmrl.sampling.schedules import PRESETS, EADSchedule, make_schedule, schedule_names

Builder = Callable[..., TokenSampler]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    params: tuple[str, ...]
    build: Builder
    needs_model: bool = False
    """LED reads intermediate layers: its parameter values can only be checked with the model."""
    schedule_based: bool = True
    """A per-token temperature over the final layer's logits (what a logits processor can host)."""


_METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str, params: tuple[str, ...], *, needs_model: bool = False, schedule_based: bool = True
) -> Callable[[Builder], Builder]:
    """Register ``build(params, *, model, top_k, top_p, min_p) -> TokenSampler`` under ``name``."""

    def decorator(build: Builder) -> Builder:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = MethodInfo(name, params, build, needs_model, schedule_based)
        return build

    return decorator


def method_names() -> list[str]:
    return list(_METHODS)


def method_info(name: str) -> MethodInfo:
    if name not in _METHODS:
        raise ValueError(f"method: unknown method {name!r}; choose one of: {', '.join(_METHODS)}")
    return _METHODS[name]


@dataclass(frozen=True)
class Method:
    """A sampling method by name, with its parameters and the truncation applied after it.

    Plain data, so it can travel to another backend (vLLM's processor reads the same fields).
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self) -> None:
        validate_method(self.name, self.params)
        validate_truncation(self.top_k, self.top_p, self.min_p)


def validate_method(name: str, params: dict[str, Any] | None = None) -> None:
    """Check a method's name, parameter names and (where the model is not needed) values.

    Errors are one line relative to the method's config keys: ``method: ...`` or
    ``params.<name>: ...``; callers prefix them with their own key (``rollout.``).
    """
    info = method_info(name)
    params = dict(params or {})
    unknown = sorted(set(params) - set(info.params))
    if unknown:
        raise ValueError(
            f"params.{unknown[0]}: not a parameter of {name!r}; allowed: {', '.join(info.params)}"
        )
    if not info.needs_model:
        info.build(params, model=None)


def make_sampler(
    name: str,
    params: dict[str, Any] | None = None,
    *,
    model: PreTrainedModel | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> TokenSampler:
    """Build the sampler of a registered method (LED needs ``model``)."""
    info = method_info(name)
    validate_method(name, params)
    if info.needs_model and model is None:
        raise ValueError(f"method: {name!r} needs the model to read its layers")
    return info.build(dict(params or {}), model=model, top_k=top_k, top_p=top_p, min_p=min_p)


def make_method_sampler(method: Method, model: PreTrainedModel | None = None) -> TokenSampler:
    return make_sampler(
        method.name,
        method.params,
        model=model,
        top_k=method.top_k,
        top_p=method.top_p,
        min_p=method.min_p,
    )


def _schedule_builder(name: str) -> Builder:
    def build(params: dict[str, Any], *, model: Any = None, **truncation: Any) -> TokenSampler:
        return TemperatureSampler(make_schedule(name, **params), **truncation)

    return build


def _schedule_params(name: str) -> tuple[str, ...]:
    kind = type(PRESETS[name]) if name in PRESETS else type(make_schedule(name))
    return tuple(f.name for f in fields(kind))


for _name in schedule_names():
    register_method(_name, _schedule_params(_name))(_schedule_builder(_name))

_CLOCK_PARAMS = ("entropy_ref", "position_weight")


@register_method("ead-entropy", (*(f.name for f in fields(EADSchedule)), *_CLOCK_PARAMS))
def _entropy_clock(params: dict[str, Any], *, model: Any = None, **truncation: Any) -> TokenSampler:
    clock = {k: params.pop(k) for k in _CLOCK_PARAMS if k in params}
    return EntropyClockSampler(make_schedule("ead-paper", **params), **clock, **truncation)


_LED_PARAMS = tuple(
    f.name for f in fields(LEDSampler) if f.init and f.name not in ("lens", "num_layers")
)


@register_method("led", _LED_PARAMS, needs_model=True, schedule_based=False)
def _led(params: dict[str, Any], *, model: Any = None, **truncation: Any) -> TokenSampler:
    if any(value is not None for value in truncation.values()):
        raise ValueError("top_k: LED draws from its own top_k candidates; set params.top_k instead")
    try:
        return LEDSampler.for_model(model, **params)
    except ValueError as error:
        raise ValueError(f"params.{error}") from None
