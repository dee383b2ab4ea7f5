"""fp32 linear layers through oneDNN where PyTorch's default CPU matmul is slow: AMD CPUs.

PyTorch's x86 wheels run an fp32 ``F.linear`` on MKL, whose code path on AMD CPUs reaches
60-70% of the rate oneDNN (in the same wheel, behind ``torch.ops.mkldnn``) gets on the same
cores. Measured on an AMD EPYC with AVX-512, 2 threads (docs/benchmarks.md section 1): a
2048^3 matmul 142 -> 212 GFLOP/s; SmolLM2's projections at 64 rows (a decode step) 1.1-1.5x
faster, its 49152-wide output projection 2.0x. On Intel CPUs MKL already runs near the cores'
peak, so ``auto`` keeps PyTorch's default there (and on AMD CPUs without AVX-512, where
MKL's AMD path is not known to lose). MKL's packed GEMM, which packs a weight once instead of
in every call, is 1.1x faster for a batch of fixed size but loses in rollouts, whose batch
shrinks every few steps and needs a new pack each time (docs/benchmarks.md section 1). Both
compute in fp32 (no reduced-precision math): outputs of size ~1 agree with a float64
reference to a few 1e-6, as MKL's do.

``use_linear_kernel(model, "onednn")`` routes the forwards of the model's ``nn.Linear``
modules to oneDNN while the block runs, for the calls the rollout engine makes (fp32 plain
tensors on the CPU, no autograd, no autocast); any other call (FSDP2's sharded weights among
them), and every call outside the block, takes ``F.linear``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from calmrl.models.compat import cpu_flags, cpu_vendor

LinearKernel = Literal["auto", "torch", "onednn"]
LINEAR_KERNELS: tuple[str, ...] = get_args(LinearKernel)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def resolve_linear_kernel(kernel: str, device: torch.device) -> str:
    """``auto``: oneDNN for CPU rollouts on AMD CPUs with AVX-512 (where it is measured
    faster), PyTorch's default elsewhere (AVX2-only AMD CPUs are unmeasured). ``onednn``
    where this PyTorch has no oneDNN falls back to ``torch``."""
    if kernel not in LINEAR_KERNELS:
        names = ", ".join(LINEAR_KERNELS)
        raise ValueError(f"linear_kernel: must be one of {names}, got {kernel!r}")
    if kernel == "auto":
        measured = cpu_vendor() == "AuthenticAMD" and "avx512f" in cpu_flags()
        kernel = "onednn" if device.type == "cpu" and measured else "torch"
    return kernel if kernel == "torch" or onednn_available() else "torch"


def onednn_linear(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear`` on oneDNN for fp32 CPU tensors outside autograd and autocast; ``F.linear``
    for anything else: the op has no backward (gradients would silently be missing), autocast
    casts only what goes through ``F.linear``, and tensor subclasses (DTensor) need their own
    dispatch."""
    if (
        type(input) is torch.Tensor
        and type(weight.data) is torch.Tensor
        and input.dtype == weight.dtype == torch.float32
        and input.device.type == "cpu"
        and input.numel() > 0
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    ):
        return torch.ops.mkldnn._linear_pointwise(input, weight, bias, "none", [], "")
    return F.linear(input, weight, bias)


def _onednn_forward(module: torch.nn.Linear, input: torch.Tensor) -> torch.Tensor:
    return onednn_linear(input, module.weight, module.bias)


@contextlib.contextmanager
def use_linear_kernel(model: torch.nn.Module, kernel: str = "auto") -> Iterator[str]:
    """Within the block, ``model``'s linear layers run on ``kernel`` (resolved: yields
    ``torch`` or ``onednn``). Modules whose ``forward`` is already replaced on the instance
    (accelerate's hooks, an enclosing block) are left as they are."""
    device = next(model.parameters()).device
    kernel = resolve_linear_kernel(kernel, device)
    patched = []
    if kernel == "onednn":
        for module in model.modules():
            if type(module) is torch.nn.Linear and "forward" not in module.__dict__:
                module.forward = functools.partial(_onednn_forward, module)
                patched.append(module)
    try:
        yield kernel
    finally:
        for module in patched:
            del module.forward
