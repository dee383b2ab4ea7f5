"""Decode-step attention on the CPU: grouped queries packed onto their key/value heads.

A decode step of a GQA model (SmolLM2: 9 query heads on 3 key/value heads) without a padding
mask reaches ``scaled_dot_product_attention(..., enable_gqa=True)`` with one query per head.
Two cases are routed, each where it was measured (docs/benchmarks.md section 1):
- bf16 on the CPU: that kernel is ~6.7x slower than the same attention with each key/value
  head's query heads packed as its query rows (5.3 ms against 0.8 ms per call at 64 rows x
  230 keys on a Xeon; equal in fp32): 60% of a bf16 rollout went there.
- fp32 where ``decode_attention(fp32="matmul")`` asks for it (``auto``: on AMD CPUs with
  AVX-512, ``compat.mkl_fp32_is_slow``): the packed queries through two batched matmuls and
  a softmax instead of SDPA's flash kernel, whose per-block GEMMs are tiny at one query
  (1.3-1.9x faster per call at 64 rows x 177-239 keys on an AMD EPYC, the engine 1.16x).
Every other call, a mask that differs between heads, soft-capping, sinks, position biases
and prefill, goes to transformers' own SDPA function unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F

from calmrl.models.compat import mkl_fp32_is_slow

_PACKED = "_calmrl_packed_decode"


def _compute_dtype(key: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in: autocast's where it is on, else the keys'."""
    device = key.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else key.dtype


Fp32DecodeAttention = Literal["auto", "sdpa", "matmul"]
FP32_DECODE_ATTENTION: tuple[str, ...] = ("auto", "sdpa", "matmul")


def _single_query(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> bool:
    """One query position on the CPU, a mask shared by all heads, no dropout, plain scores."""
    groups = getattr(module, "num_key_value_groups", 1)
    mask_shared = attention_mask is None or (
        attention_mask.dim() == 4 and attention_mask.shape[1] == 1 and attention_mask.shape[2] == 1
    )
    # Soft-capping, attention sinks and position biases change the scores: leave them to HF.
    extras = any(kwargs.get(name) is not None for name in ("softcap", "s_aux", "position_bias"))
    return (
        query.device.type == "cpu"
        and query.shape[2] == 1
        and query.shape[1] == key.shape[1] * groups
        and mask_shared
        and dropout == 0.0
        and not extras
    )


def _packable(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> bool:
    return (
        _compute_dtype(key) == torch.bfloat16
        and getattr(module, "num_key_value_groups", 1) > 1
        and _single_query(module, query, key, attention_mask, dropout, kwargs)
    )


def _matmul_eligible(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> bool:
    return (
        _compute_dtype(key) == torch.float32
        and query.dtype == key.dtype == torch.float32
        and _single_query(module, query, key, attention_mask, dropout, kwargs)
    )


def packed_decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """Attention of one query position, ``[B, Hq, 1, D]`` over ``[B, Hkv, T, D]`` keys, with
    the ``Hq / Hkv`` query heads of each key/value head as its query rows. Returns HF's layout
    ``[B, 1, Hq, D]``."""
    batch, heads, _, dim = query.shape
    dtype = _compute_dtype(key)
    packed = query.to(dtype).reshape(batch, key.shape[1], heads // key.shape[1], dim)
    out = F.scaled_dot_product_attention(
        packed, key.to(dtype), value.to(dtype), attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous()


def matmul_decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """fp32 attention of one query position, ``[B, Hq, 1, D]`` over ``[B, Hkv, T, D]`` keys:
    softmax(q k^T * scaling + mask) v with the query heads of each key/value head as its
    rows, as two batched matmuls. ``attention_mask`` is boolean (True: attend) or additive.
    Returns HF's layout ``[B, 1, Hq, D]``."""
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, key.shape[1], heads // key.shape[1], dim)
    scores = torch.matmul(packed, key.transpose(-1, -2))
    scores.mul_(dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores.masked_fill_(~attention_mask, float("-inf"))
    elif attention_mask is not None:
        scores.add_(attention_mask)
    out = torch.matmul(scores.softmax(-1), value)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous()


def _wrap(original: Callable[..., Any], fp32_matmul: bool) -> Callable[..., Any]:
    def attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if _packable(module, query, key, attention_mask, dropout, kwargs):
            return packed_decode_attention(query, key, value, attention_mask, scaling), None
        if fp32_matmul and _matmul_eligible(module, query, key, attention_mask, dropout, kwargs):
            return matmul_decode_attention(query, key, value, attention_mask, scaling), None
        return original(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )

    setattr(attention, _PACKED, True)
    return attention


def resolve_fp32_decode_attention(kind: str, device: torch.device) -> str:
    """``auto``: ``matmul`` on the CPUs where it is measured faster (AMD with AVX-512),
    ``sdpa`` (transformers' own) elsewhere."""
    if kind not in FP32_DECODE_ATTENTION:
        names = ", ".join(FP32_DECODE_ATTENTION)
        raise ValueError(f"decode_attention: must be one of {names}, got {kind!r}")
    if kind == "auto":
        return "matmul" if device.type == "cpu" and mkl_fp32_is_slow() else "sdpa"
    return kind


@contextlib.contextmanager
def decode_attention(fp32: str = "auto", device: torch.device | None = None) -> Iterator[str]:
    """Within the block, models using ``sdpa`` attention take the routes above (transformers'
    attention registry gets a local ``sdpa`` entry, restored on exit); the bf16 route always,
    the fp32 one where ``fp32`` resolves to ``matmul`` (yielded). Inside an enclosing block
    the enclosing routes stay."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    fp32 = resolve_fp32_decode_attention(fp32, device or torch.device("cpu"))
    original = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if getattr(original, _PACKED, False):  # already inside such a block
        yield fp32
        return
    # A fresh interface sees only the library-wide mapping: was "sdpa" overridden locally?
    overridden = original is not type(ALL_ATTENTION_FUNCTIONS)()["sdpa"]
    ALL_ATTENTION_FUNCTIONS["sdpa"] = _wrap(original, fp32_matmul=fp32 == "matmul")
    try:
        yield fp32
    finally:
        if overridden:
            ALL_ATTENTION_FUNCTIONS["sdpa"] = original
        else:
            del ALL_ATTENTION_FUNCTIONS["sdpa"]
