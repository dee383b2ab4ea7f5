"""Run-directory state: atomic checkpoints, the final model, and what resume reads back.

Layout of ``RUN_DIR/checkpoints/step-000010/``: ``model/`` (``save_pretrained``, safetensors,
loadable with ``from_pretrained``; with LoRA, peft's adapter files, loadable with
``PeftModel.from_pretrained``), ``trainer_state.pt`` (optimizer, LR scheduler, RNG states,
global step, data cursor, counters, the value head for GAE). Every directory is written
with ``calmrl.io.atomic_dir``, so a crash mid-write leaves the previous one intact.
"""

from __future__ import annotations

import pickle
import random
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from calmrl.io import atomic_dir
from calmrl.models.lora import load_weights, merged
from calmrl.rl.value_head import ValueHead

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


def restore_rng(trainer_state: dict[str, Any], rank: int, world_size: int) -> None:
    """This rank's RNG state from a checkpoint; at another world size, rank 0's."""
    per_rank = trainer_state.get("rng_ranks") or []
    set_rng_state(per_rank[rank] if len(per_rank) == world_size else trainer_state["rng"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``checkpoints/step-NNNNNN`` atomically, then keep only the newest ``keep``."""
    final = run_dir / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(final) as staging:
        model.save_pretrained(staging / "model", safe_serialization=True)
        tokenizer.save_pretrained(staging / "model")
        torch.save({**state, "rng": rng_state()}, staging / "trainer_state.pt")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_final(
    run_dir: Path, model: PreTrainedModel, tokenizer: Any, value_head: ValueHead | None
) -> Path:
    """``final/``: a plain HF model (LoRA merged), its tokenizer and the value head, if any."""
    final = run_dir / "final"
    with atomic_dir(final) as staging:
        merged(model).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if value_head is not None:
            save_file(value_head.state_dict(), str(staging / "value_head.safetensors"))
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found) if (p / "trainer_state.pt").is_file()]


def latest_checkpoint(run_dir: Path) -> Path:
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(
            f"--resume: no complete checkpoint under {run_dir}/checkpoints; "
            "a run writes them every train.save_every steps"
        )
    return checkpoints[-1]


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / "trainer_state.pt", weights_only=False)


def read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted((checkpoint / "model").glob("*.safetensors")):
        weights.update(load_file(shard, device="cpu"))
    return weights


def load_model_weights(weights: dict[str, torch.Tensor], model: PreTrainedModel) -> None:
    """A checkpoint's weights into ``model`` (full weights, or LoRA adapters only)."""
    missing, unexpected = load_weights(model, weights)
    if missing or unexpected:
        raise ValueError(
            f"--resume: the checkpoint does not match the model (missing {missing[:2]}, "
            f"unexpected {unexpected[:2]}); resume with the same model.name and model.lora_rank"
        )


def load_latest_readable(
    checkpoints: list[Path], apply: Callable[[dict[str, torch.Tensor], dict[str, Any]], None]
) -> tuple[Path, dict[str, Any]]:
    """``apply(weights, trainer_state)`` of the newest checkpoint that reads; a truncated or
    corrupt one is skipped with a warning (a crash or a full disk while it was written)."""
    for checkpoint in reversed(checkpoints):
        try:
            weights, state = read_weights(checkpoint), load_trainer_state(checkpoint)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as e:
            warnings.warn(
                f"--resume: checkpoint {checkpoint} is unreadable ({type(e).__name__}); "
                "using the one before it",
                stacklevel=2,
            )
            continue
        apply(weights, state)
        return checkpoint, state
    raise FileNotFoundError(f"--resume: no readable checkpoint among {len(checkpoints)}")
