"""The ``calmrl:`` section of a veRL config and EAD's per-request sampling params (no veRL import).

veRL turns most config sections into strict dataclasses, so calmrl's settings sit in a top-level
section of their own, which veRL passes around untouched (``trainer_config`` in agent loops,
``self.config`` in trainers)::

    calmrl:
      rollout:                # read by the calmrl_ead agent loop
        method: ead           # any method of calmrl.sampling.methods a logits processor can host
        params: {tau_max: 1.2, tau_min: 0.1, d0: 25.0, alpha: 5.0, warmup_tokens: 10}
      entropy_shaping:        # read by the calmrl_* trainer modes
        alpha: 0.4
        kappa: 2.0

Errors are one line naming the key, as calmrl's own config errors are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calmrl.sampling.methods import Method

SECTION = "calmrl"
_KEYS = {"rollout": ("method", "params"), "entropy_shaping": ("alpha", "kappa")}


@dataclass(frozen=True)
class Settings:
    method: Method | None = None
    """EAD's method for training rollouts; None when the section has no ``rollout``."""
    alpha: float = 0.4
    kappa: float = 2.0
    """Entropy shaping ``A + min(alpha * H, |A| / kappa)``; the paper's GRPO values."""


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}: must be a mapping, got {value!r}")
    allowed = _KEYS.get(key.rpartition(".")[2])
    unknown = sorted(set(value) - set(allowed)) if allowed else []
    if unknown:
        raise ValueError(f"{key}.{unknown[0]}: unknown key; allowed: {', '.join(allowed or ())}")
    return value


def read_settings(config: Mapping[str, Any]) -> Settings:
    """Settings from a full veRL config (a ``DictConfig`` or a plain mapping)."""
    section = config.get(SECTION)
    if section is not None and not isinstance(section, Mapping):
        raise ValueError(f"{SECTION}: must be a mapping, got {section!r}")
    unknown = sorted(set(section or {}) - set(_KEYS))
    if unknown:
        raise ValueError(f"{SECTION}.{unknown[0]}: unknown key; allowed: {', '.join(_KEYS)}")
    rollout = _mapping((section or {}).get("rollout"), f"{SECTION}.rollout")
    shaping = _mapping((section or {}).get("entropy_shaping"), f"{SECTION}.entropy_shaping")
    method = None
    if rollout:
        params = rollout.get("params") or {}
        if not isinstance(params, Mapping):
            raise ValueError(f"{SECTION}.rollout.params: must be a mapping, got {params!r}")
        try:
            # Plain values: they travel to vLLM inside SamplingParams.extra_args.
            method = Method(str(rollout.get("method")), {k: params[k] for k in params})
        except ValueError as error:
            raise ValueError(f"{SECTION}.rollout.{error}") from None
    alpha, kappa = float(shaping.get("alpha", 0.4)), float(shaping.get("kappa", 2.0))
    if not alpha >= 0:
        raise ValueError(f"{SECTION}.entropy_shaping.alpha: must be >= 0, got {alpha}")
    if not kappa > 0:
        raise ValueError(f"{SECTION}.entropy_shaping.kappa: must be > 0, got {kappa}")
    return Settings(method=method, alpha=alpha, kappa=kappa)


def calmrl_step(global_steps: Any) -> int:
    """veRL counts training steps from 1 (0 before training); calmrl's first step is 0."""
    return max(int(global_steps) - 1, 0)


def ead_sampling_params(
    sampling_params: Mapping[str, Any], method: Method, global_steps: Any
) -> dict[str, Any]:
    """One request's veRL sampling params with EAD's ``extra_args["calmrl"]`` added.

    Only requests at temperature 1 get it: the method sets every token's temperature, and
    calmrl's vLLM processor accepts it only at 1. veRL's validation requests run at
    ``val_kwargs.temperature`` (greedy: 0) and so are left as they are; with
    ``val_kwargs.temperature=1.0`` validation samples with EAD too.
    """
    params = dict(sampling_params)
    if not math.isclose(float(params.get("temperature", 1.0)), 1.0):
        return params
    if global_steps is None:
        raise ValueError(
            "global_steps: the calmrl_ead agent loop reads the training step from the prompt's "
            "global_steps field, which veRL's v1 trainer sets (trainer.use_v1=true, the default)"
        )
    extra = dict(params.get("extra_args") or {})
    extra[SECTION] = {
        "method": method.name,
        "params": dict(method.params),
        "step": calmrl_step(global_steps),
    }
    params["extra_args"] = extra
    return params
