"""Atomic checkpoints: an HF-format model plus everything needed to resume bit-exactly.

Layout of ``RUN_DIR/checkpoints/step-000010/``: ``model/`` (``save_pretrained``, safetensors,
loadable with ``from_pretrained``; with LoRA, peft's adapter files, loadable with
``PeftModel.from_pretrained``), ``trainer_state.pt`` (optimizer, LR scheduler, RNG states,
global step, data cursor, counters, the value head for GAE). A checkpoint is written into a
hidden temporary directory and renamed into place only when complete, so a crash mid-write
leaves the previous one intact.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    keep: int,
) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    staging = root / f".tmp-step-{step:06d}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging / "model", safe_serialization=True)
        tokenizer.save_pretrained(staging / "model")
        torch.save({**state, "rng": rng_state()}, staging / "trainer_state.pt")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found) if (p / "trainer_state.pt").is_file()]


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / "trainer_state.pt", weights_only=False)
