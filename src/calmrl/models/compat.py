"""Shims over Hugging Face model APIs that differ between transformers versions and models."""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import os

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutputWithPast

from calmrl.models.lens import LogitLens


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a response: the generation config's (one or several), the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


# transformers 5.24 renamed forward's ``past_key_values`` argument and output field to ``cache``;
# the old name still works there but warns on every call (and goes in 5.40), while the vLLM and
# veRL venvs (5.19, 5.10) know only the old one.
CACHE_ARGUMENT = (
    "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
)


def cache_kwargs(cache: object) -> dict[str, object]:
    """``forward``'s keyword argument that passes a KV cache, under this transformers' name."""
    return {CACHE_ARGUMENT: cache}


def output_cache(outputs: object) -> object:
    """The KV cache a ``forward`` returned."""
    return getattr(outputs, CACHE_ARGUMENT)


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


def _cpuinfo(field: str) -> str:
    """The first CPU's ``field`` in ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where they cannot be read)."""
    return set(_cpuinfo("flags").split())


def cpu_vendor() -> str:
    """The CPU's vendor id, e.g. ``GenuineIntel`` or ``AuthenticAMD`` (empty if unknown)."""
    return _cpuinfo("vendor_id")


# CPU flags whose bf16 matmuls beat fp32. Measured (docs/benchmarks.md section 1): AMX-BF16
# 5.3x the fp32 matmul on a Xeon, rollouts 1.8x, the demo 1.36x; AVX512-BF16 ~4x on an EPYC,
# rollouts 2.2x, the demo 2x. AVX2-only CPUs emulate bf16 and run it ~100x slower than fp32.
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_autocast(setting: str | None, device: torch.device) -> torch.dtype | None:
    """The compute dtype of ``model.autocast``: ``auto`` is bf16 where it is fast (a CUDA GPU
    with bf16, a CPU with AMX-BF16 or AVX512-BF16) and fp32 elsewhere."""
    if setting is None:
        return None
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    fast = device.type == "cpu" and any(flag in cpu_flags() for flag in FAST_BF16_CPU_FLAGS)
    return torch.bfloat16 if fast else None


# glibc mallopt parameters (malloc.h) and the values calmrl sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT_MMAP_THRESHOLD = 128 * 1024
_KEEP_BYTES = 1 << 30


def keep_freed_memory(enabled: bool = True) -> bool:
    """Stop glibc from unmapping every large freed block (True where it took effect).

    On the CPU, PyTorch allocates each op's output with malloc; glibc serves blocks above its
    mmap threshold (128 KiB at first) with fresh ``mmap`` pages and unmaps them on free, so
    every ``[rows, vocabulary]`` temporary of a decode step is page-faulted in again: a float64
    cumsum over ``[64, 49152]`` takes 17 ms that way and 1.3 ms with the pages kept (see
    docs/benchmarks.md section 1). Raising the mmap and trim thresholds keeps freed memory in
    the heap for reuse. ``CALMRL_KEEP_FREED_MEMORY=0`` opts out; ``enabled=False`` restores
    glibc's initial thresholds (benchmarks compare the two).
    """
    if os.environ.get("CALMRL_KEEP_FREED_MEMORY", "1") == "0" and enabled:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return False
    mmap = _KEEP_BYTES if enabled else _GLIBC_DEFAULT_MMAP_THRESHOLD
    trim = _KEEP_BYTES if enabled else _GLIBC_DEFAULT_MMAP_THRESHOLD
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap) and libc.mallopt(_M_TRIM_THRESHOLD, trim))


# oneDNN (bf16 matmuls on the CPU) caches 1024 compiled kernels by default, each with its
# own buffers; rollouts and updates see a new shape at almost every step (batch rows finish,
# lengths vary), so the cache grows to gigabytes (docs/benchmarks.md section 1).
# 64 holds the kernels of one micro-batch's forward and backward; 16 re-created them within it.
_ONEDNN_PRIMITIVE_CACHE = "64"


def bound_kernel_cache() -> None:
    """Cap oneDNN's primitive cache at 64 kernels unless the user set
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``: the bf16 demo's peak RSS fell from 7.7 to 6.1 GB at
    the same speed (a cap of 16: 5.8 GB and 16% slower). oneDNN reads the variable when it
    creates its first kernel, so this runs before any (``load_model`` calls it first)."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", _ONEDNN_PRIMITIVE_CACHE)


def decoder_and_head(model: PreTrainedModel) -> tuple[torch.nn.Module, torch.Tensor] | None:
    """(the decoder stack, the output projection's weight) where logits are exactly
    ``hidden @ weight.T``: no bias, no soft-capping or logit scale, not sharded (FSDP2's
    DTensors gather only inside the root module's forward). None otherwise."""
    head = model.get_output_embeddings()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model or type(head) is not torch.nn.Linear:
        return None
    if head.bias is not None or hasattr(head.weight, "placements"):
        return None
    lens = LogitLens.of(model)  # it reads the logit scale and soft-capping of any config
    if lens.scale != 1.0 or lens.softcap is not None:
        return None
    return decoder, head.weight
