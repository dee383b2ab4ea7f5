"""Decode-step attention on the CPU: grouped queries packed onto their key/value heads.

A decode step of a GQA model (SmolLM2: 9 query heads on 3 key/value heads) reaches
``scaled_dot_product_attention(..., enable_gqa=True)`` with one query per head whenever
transformers drops the padding mask (every row as long as the others: one prompt's n samples,
prompts of one length). On the CPU that kernel is slower than the same attention with each
key/value head's query heads packed as its query rows: in bf16 ~6.7x (5.3 ms against 0.8 ms
per call at 64 rows x 230 keys on an AMD EPYC, 60% of a bf16 rollout there), and on an Intel
Xeon with AMX 1.3-3.0x in fp32 and 1.1-2.1x in bf16 (1 to 64 rows, 184 to 1000 keys, 3 to 7
query heads per key/value head; docs/benchmarks.md section 1). With a mask, transformers packs
the queries itself. ``route_decode_attention()`` routes a single query position on the CPU with
a mask shared by all heads, or none, to the packed form, and every other call to transformers'
own SDPA function unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

_PACKED = "_calmrl_packed_decode"


def _compute_dtype(key: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in: autocast's where it is on, else the keys'."""
    device = key.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else key.dtype


def _packable(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> bool:
    groups = getattr(module, "num_key_value_groups", 1)
    mask_shared = attention_mask is None or (
        attention_mask.dim() == 4 and attention_mask.shape[1] == 1 and attention_mask.shape[2] == 1
    )
    # Soft-capping, attention sinks and position biases change the scores: leave them to HF.
    extras = any(kwargs.get(name) is not None for name in ("softcap", "s_aux", "position_bias"))
    return (
        query.device.type == "cpu"
        and query.shape[2] == 1
        and groups > 1
        and query.shape[1] == key.shape[1] * groups
        and mask_shared
        and dropout == 0.0
        and not extras
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


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
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
        return original(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )

    setattr(attention, _PACKED, True)
    return attention


@contextlib.contextmanager
def route_decode_attention() -> Iterator[None]:
    """Within the block, models using ``sdpa`` attention take the packed decode path above
    (transformers' attention registry gets a local ``sdpa`` entry, restored on exit)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if getattr(original, _PACKED, False):  # already inside such a block
        yield
        return
    # A fresh interface sees only the library-wide mapping: was "sdpa" overridden locally?
    overridden = original is not type(ALL_ATTENTION_FUNCTIONS)()["sdpa"]
    ALL_ATTENTION_FUNCTIONS["sdpa"] = _wrap(original)
    try:
        yield
    finally:
        if overridden:
            ALL_ATTENTION_FUNCTIONS["sdpa"] = original
        else:
            del ALL_ATTENTION_FUNCTIONS["sdpa"]
