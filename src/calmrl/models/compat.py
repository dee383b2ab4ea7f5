"""Shims over Hugging Face model APIs that differ between transformers versions and models."""

from __future__ import annotations

import contextlib
import inspect

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a response: the generation config's (one or several), the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def supports_logits_to_keep(model: PreTrainedModel) -> bool:
    """Whether ``forward`` can skip the output projection for all but the last positions."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def is_checkpointing(model: PreTrainedModel) -> bool:
    """Whether activation (gradient) checkpointing is on; it disables the KV cache."""
    # transformers 5 names it is_activation_checkpointing; peft models forward the attribute.
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        with contextlib.suppress(AttributeError):
            return bool(getattr(model, name))
    return False


def enable_checkpointing(model: PreTrainedModel) -> None:
    # transformers 5 renamed it; older versions only have the gradient_ name.
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()


def tied_keys(model: PreTrainedModel) -> set[str]:
    """State-dict keys that alias another weight (absent from a saved checkpoint)."""
    tied = getattr(model, "_tied_weights_keys", None) or []
    return set(tied if isinstance(tied, list) else tied.keys())


def check_device(name: str) -> torch.device:
    """The device ``name`` names, if this machine has it (one-line errors otherwise)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: this machine has no CUDA device; use model.device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValueError(f"{name}: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}: MPS is not available here; use model.device=cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name}: calmrl runs on cpu, cuda or mps")
    return device


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_autocast(setting: str | None, device: torch.device) -> torch.dtype | None:
    """The compute dtype of ``model.autocast``: ``auto`` is bf16 where it is fast (a CUDA GPU
    with bf16, a CPU with AMX-BF16 tiles) and fp32 elsewhere (on AVX2/AVX-512 CPUs without
    AMX, bf16 matmuls are several to ~100x slower than fp32)."""
    if setting is None:
        return None
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and "amx_bf16" in cpu_flags() else None
