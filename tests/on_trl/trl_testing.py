"""A 3-step TRL GRPO run on a tiny head_dim-64 llama with calmrl's trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def require_trl() -> Any:
    try:
        import trl
        import vllm  # noqa: F401
    except ImportError as error:  # pragma: no cover - the main venv
        pytest.skip(f"TRL or vLLM is not installed ({error}); `make test-trl` installs them")
    return trl


def parity_reward(completions: list[str], **_: Any) -> list[float]:
    """About half of random completions score 1, so GRPO groups carry a learning signal."""
    return [float(bool(c) and ord(c[0]) % 2 == 0) for c in completions]


def grpo_config(out: Path, **overrides: Any) -> Any:
    from trl import GRPOConfig

    settings: dict[str, Any] = {
        "output_dir": str(out),
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 32,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_max_model_length": 256,
        "seed": 0,
        "temperature": 1.0,
        **overrides,
    }
    return GRPOConfig(**settings)


def prompts() -> Any:
    from datasets import Dataset

    words = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
    return Dataset.from_dict({"prompt": [f"Count: {w} and" for w in words] * 2})


def run(path: Path, out: Path, config: dict[str, Any] | None = None, **trainer_kwargs: Any) -> Any:
    """Train 3 steps; returns the trainer (its ``state.log_history`` holds TRL's metrics)."""
    from calmrl.integrations.trl import CalmrlGRPOTrainer

    trainer = CalmrlGRPOTrainer(
        model=str(path),
        reward_funcs=parity_reward,
        args=grpo_config(out, **(config or {})),
        train_dataset=prompts(),
        **trainer_kwargs,
    )
    trainer.train()
    return trainer


def metric(trainer: Any, name: str) -> list[float]:
    return [row[name] for row in trainer.state.log_history if name in row]


def stop(trainer: Any) -> None:
    core = getattr(trainer.vllm_generation.llm.llm_engine, "engine_core", None)
    if core is not None:
        core.shutdown()
