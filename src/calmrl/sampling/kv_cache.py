"""A KV cache written in place: one buffer per layer for the whole rollout.

HF's ``DynamicCache`` grows by ``torch.cat`` at every decode step, copying the whole cache
each time (O(T^2) bytes moved over a rollout; 32% of a SmolLM2 decode step at batch 64 on the
CPU). Here each full-attention layer allocates ``[batch, heads, prompt + max_new_tokens,
head_dim]`` once at prefill and writes each step's keys and values into the next slot; the
model reads a view of the filled part. Sliding-window layers (Gemma 3) keep HF's own layer.
Under autocast the buffers hold the autocast dtype (see ``_attention_dtype``).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key_states, value_states = _attention_dtype(key_states), _attention_dtype(value_states)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[-2]:
            self._grow(key_states, value_states, max(end, self.capacity))
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        batch, heads, _, _ = key_states.shape
        keys = key_states.new_empty(batch, heads, capacity, key_states.shape[-1])
        values = value_states.new_empty(batch, heads, capacity, value_states.shape[-1])
        if self._keys is not None:
            keys[:, :, : self.length] = self._keys[:, :, : self.length]
            values[:, :, : self.length] = self._values[:, :, : self.length]
        self._keys, self._values = keys, values

    def _expose(self) -> None:
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self._keys = self._keys.repeat_interleave(repeats, dim=0)
            self._values = self._values.repeat_interleave(repeats, dim=0)
            self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices``: only the filled part of their buffers is copied."""
        if self.length:
            keys = self._keys.new_empty(len(indices), *self._keys.shape[1:])
            values = self._values.new_empty(len(indices), *self._values.shape[1:])
            keys[:, :, : self.length] = self._keys[indices, :, : self.length]
            values[:, :, : self.length] = self._values[indices, :, : self.length]
            self._keys, self._values = keys, values
            self._expose()


def _attention_dtype(states: torch.Tensor) -> torch.Tensor:
    """Under autocast, the dtype attention will cast the states to anyway. RoPE multiplies the
    bf16 keys by fp32 cos/sin, so keys arrive in fp32 while values are bf16; stored as they
    come, autocast would cast the whole fp32 key cache to bf16 for every decode step (60% of a
    bf16 rollout on the CPU). Stored in bf16 they are what attention reads, bit for bit."""
    device = states.device.type
    if torch.is_autocast_enabled(device) and states.is_floating_point():
        return states.to(torch.get_autocast_dtype(device))
    return states


def preallocated_cache(model: PreTrainedModel, capacity: int) -> DynamicCache | None:
    """A ``DynamicCache`` whose full-attention layers write in place (None: use the default)."""
    try:
        cache = DynamicCache(config=model.config)
    except (AttributeError, TypeError, ValueError):  # a config this transformers cannot map
        return None
    if not cache.layers:
        return None
    cache.layers = [
        PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer
        for layer in cache.layers
    ]
    return cache


def is_preallocated(cache: DynamicCache | None) -> bool:
    return cache is not None and all(type(layer) is PreallocatedLayer for layer in cache.layers)


def place_rows(
    target: DynamicCache, rows: torch.Tensor, source: DynamicCache, end: int, batch: int
) -> None:
    """Copy ``source``'s filled keys/values into rows ``rows`` of ``target``, right-aligned at
    position ``end`` (left padding: every prompt ends at ``end``). ``target``'s buffers are
    created zeroed on first use for ``batch`` rows: the padding slots no row fills must be
    finite, or the masked attention scores over them would turn NaN."""
    for into, src in zip(target.layers, source.layers, strict=True):
        keys, values = src._keys[:, :, : src.length], src._values[:, :, : src.length]
        if into._keys is None:
            into.lazy_initialization(keys, values)
            into._keys = keys.new_zeros(batch, keys.shape[1], into.capacity, keys.shape[-1])
            into._values = values.new_zeros(batch, values.shape[1], into.capacity, values.shape[-1])
        into._keys[rows, :, end - src.length : end] = keys
        into._values[rows, :, end - src.length : end] = values
        into.length = end
        into._expose()


def repeat_prefix(target: DynamicCache, prefix: DynamicCache, rows: int) -> None:
    """Start each layer of the empty ``target`` with ``prefix``'s one row, repeated ``rows``
    times (a bucket of prompts then attends to the prefix computed once)."""
    for into, src in zip(target.layers, prefix.layers, strict=True):
        into.update(src.keys.expand(rows, -1, -1, -1), src.values.expand(rows, -1, -1, -1))


def place_prefix(
    target: DynamicCache, rows: torch.Tensor, prefix: DynamicCache, ends: torch.Tensor
) -> None:
    """Copy ``prefix``'s one row into rows ``rows`` of ``target``, ending at position
    ``ends[i]`` in row ``rows[i]`` (where that row's own tokens begin)."""
    for into, src in zip(target.layers, prefix.layers, strict=True):
        slots = ends[:, None] - src.length + torch.arange(src.length, device=ends.device)
        row_index = rows[:, None].expand_as(slots)
        # [rows, positions] index a [batch, positions, heads, head_dim] view of the buffers.
        into._keys.transpose(1, 2)[row_index, slots] = src.keys[0].transpose(0, 1)
        into._values.transpose(1, 2)[row_index, slots] = src.values[0].transpose(0, 1)
