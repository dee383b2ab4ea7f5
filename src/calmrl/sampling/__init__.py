"""Rollouts: the backend protocol, calmrl's engine, samplers, schedules and rollout metrics."""

from calmrl.sampling.backend import RolloutBackend, backend_names, build_backend
from calmrl.sampling.distributions import sampling_log_probs
from calmrl.sampling.engine import HFBackend, NonFiniteLogitsError, generate
from calmrl.sampling.entropy_clock import EntropyClockSampler
from calmrl.sampling.led import LEDSampler
from calmrl.sampling.methods import Method, make_sampler, method_names, validate_method
from calmrl.sampling.rollouts import Rollouts
from calmrl.sampling.samplers import TemperatureSampler, TokenSampler

__all__ = [
    "EntropyClockSampler",
    "HFBackend",
    "LEDSampler",
    "Method",
    "NonFiniteLogitsError",
    "RolloutBackend",
    "Rollouts",
    "TemperatureSampler",
    "TokenSampler",
    "backend_names",
    "build_backend",
    "generate",
    "make_sampler",
    "method_names",
    "sampling_log_probs",
    "validate_method",
]
