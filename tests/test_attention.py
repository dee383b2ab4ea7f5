"""The packed decode attention (``calmrl.models.attention``) and the autocast-dtype KV
cache: the same attention as transformers' SDPA path, routed only where it applies, and the
registry left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from calmrl.models.attention import packed_decode_attention, route_decode_attention
from calmrl.models.compat import cache_kwargs
from calmrl.sampling import generate
from calmrl.sampling.kv_cache import preallocated_cache
from calmrl.sampling.schedules import ConstantSchedule


def grouped_reference(query, key, value, mask):
    """fp32 attention with every key/value head repeated for its query heads (HF's repeat_kv)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), attn_mask=mask)
    return out.transpose(1, 2)


@pytest.mark.parametrize("with_mask", [False, True])
def test_packed_attention_equals_repeated_heads(with_mask):
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(5, 6, 1, 16, generator=gen)
    key, value = torch.randn(5, 2, 11, 16, generator=gen), torch.randn(5, 2, 11, 16, generator=gen)
    mask = None
    if with_mask:
        mask = torch.ones(5, 1, 1, 11, dtype=torch.bool)
        mask[1, ..., :4] = False  # left padding of row 1
    expected = grouped_reference(query, key, value, mask)
    # fp32: the same numbers; bf16 (autocast): within bf16 rounding of the inputs.
    fp32 = packed_decode_attention(query, key, value, mask, None)
    torch.testing.assert_close(fp32, expected, atol=1e-6, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = packed_decode_attention(query, key, value, mask, None)
    assert bf16.dtype == torch.bfloat16 and bf16.shape == (5, 1, 6, 16)
    torch.testing.assert_close(bf16.float(), expected, atol=3e-2, rtol=3e-2)


class _Module(torch.nn.Module):
    num_key_value_groups = 3


def test_the_registry_routes_only_single_query_calls_and_is_restored():
    original = ALL_ATTENTION_FUNCTIONS["sdpa"]
    calls = []
    module = _Module()
    with route_decode_attention():
        routed = ALL_ATTENTION_FUNCTIONS["sdpa"]
        assert routed is not original
        with route_decode_attention():  # nested: nothing changes
            assert ALL_ATTENTION_FUNCTIONS["sdpa"] is routed
        query, key = torch.randn(2, 6, 1, 8), torch.randn(2, 2, 5, 8)
        import calmrl.models.attention as attention

        real = attention.packed_decode_attention
        attention.packed_decode_attention = lambda *a: calls.append(a) or real(*a)
        try:
            out, _ = routed(module, query, key, key, None)  # fp32, no mask
            assert len(calls) == 1 and out.shape == (2, 1, 6, 8)
            routed(module, query.bfloat16(), key.bfloat16(), key.bfloat16(), None)
            shared = torch.ones(2, 1, 1, 5, dtype=torch.bool)
            routed(module, query, key, key, shared)
            assert len(calls) == 3
            # Per-head masks, soft-capped scores and multi-query prefill calls are left to
            # transformers.
            per_head = torch.ones(2, 6, 1, 5, dtype=torch.bool)
            assert not attention._packable(module, query, key, per_head, 0.0, {})
            assert not attention._packable(module, query, key, None, 0.0, {"softcap": 30.0})
            wide = torch.randn(2, 6, 3, 8)
            assert not attention._packable(module, wide, key, None, 0.0, {})
            assert not attention._packable(module, query, key, None, 0.1, {})
        finally:
            attention.packed_decode_attention = real
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is original
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is type(ALL_ATTENTION_FUNCTIONS)()["sdpa"]


def test_under_autocast_the_cache_holds_bf16_keys_and_values(tiny):
    model, tokenizer = tiny
    ids = tokenizer(["3+4="], return_tensors="pt")
    cache = preallocated_cache(model, ids["input_ids"].shape[1] + 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**ids, use_cache=True, **cache_kwargs(cache))
    layer = cache.layers[0]
    assert layer.keys.dtype == layer.values.dtype == torch.bfloat16


def test_fp32_rollouts_do_not_change_and_bf16_rollouts_follow_a_full_forward(tiny):
    model, tokenizer = tiny
    prompts = ["1+2=", "a longer prompt, 7+8="]
    sample = dict(n=3, max_new_tokens=6, seed=0)
    fp32 = generate(model, tokenizer, prompts, ConstantSchedule(1.0), **sample)
    again = generate(model, tokenizer, prompts, ConstantSchedule(1.0), **sample)
    assert torch.equal(fp32.response_ids, again.response_ids)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = generate(model, tokenizer, prompts, ConstantSchedule(1.0), **sample)
        # The recorded log-probs are those of a plain bf16 forward over the sampled tokens.
        ids = torch.cat([bf16.prompt_ids, bf16.response_ids], 1)
        mask = torch.cat([bf16.prompt_mask, bf16.response_mask], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    width = bf16.prompt_ids.shape[1]
    full = logits[:, width - 1 : -1].log_softmax(-1)
    full = full.gather(-1, bf16.response_ids[..., None]).squeeze(-1)
    on = bf16.response_mask.bool()
    assert (full[on] - bf16.logprobs[on]).abs().max() < 0.1
