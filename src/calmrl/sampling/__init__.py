"""The rollout engine: batched generation with exact behaviour log-probs."""

from calmrl.sampling.engine import TemperatureSampler, TokenSampler, generate
from calmrl.sampling.entropy_clock import EntropyClockSampler
from calmrl.sampling.led import LEDSampler
from calmrl.sampling.processors import ScheduledTemperatureProcessor, sampling_log_probs
from calmrl.sampling.rollouts import Rollouts

__all__ = [
    "EntropyClockSampler",
    "LEDSampler",
    "Rollouts",
    "ScheduledTemperatureProcessor",
    "TemperatureSampler",
    "TokenSampler",
    "generate",
    "sampling_log_probs",
]
