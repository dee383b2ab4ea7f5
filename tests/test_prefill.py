"""Bucketed, chunked prefill: the same rollouts as one padded forward, without the padding."""

import pytest
import torch

from calmrl.models import tiny_model
from calmrl.sampling import generate
from calmrl.sampling.kv_cache import is_preallocated
from calmrl.sampling.prefill import buckets, left_pad, prefill, shared_prefix_length
from calmrl.sampling.schedules import EADSchedule

PROMPTS = ["a", "a longer prompt here with more words", "xyz", "mid length one", "b c"]


def test_buckets_are_length_sorted_and_respect_the_budget():
    lengths = [5, 1, 9, 3, 3, 20]
    got = buckets(lengths, token_budget=9)
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))
    flat = [i for b in got for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths)
    for bucket in got:  # a bucket over budget holds one prompt, which is then chunked
        assert len(bucket) * max(lengths[i] for i in bucket) <= 9 or len(bucket) == 1
    assert got == [[1, 3, 4], [0], [2], [5]]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("budget", [1, 7, 16])
def test_prefill_in_buckets_equals_one_padded_forward(arch, budget):
    model, tokenizer = tiny_model(arch, seed=2)
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    kwargs = {"use_cache": True, "output_hidden_states": True, "logits_to_keep": 1}
    with torch.no_grad():
        one = prefill(model, ids, mask, capacity=ids.shape[1] + 4, forward_kwargs=kwargs,
                      token_budget=10**6)  # fmt: skip
        many = prefill(model, ids, mask, capacity=ids.shape[1] + 4, forward_kwargs=kwargs,
                       token_budget=budget)  # fmt: skip
    assert is_preallocated(many.cache)
    torch.testing.assert_close(many.logits, one.logits, atol=1e-5, rtol=0)
    for a, b in zip(many.hidden_states, one.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    real = mask.bool()
    for a, b in zip(many.cache.layers, one.cache.layers, strict=True):
        assert a.keys.shape == b.keys.shape  # [P, heads, width, head_dim], left-padded
        torch.testing.assert_close(a.keys.transpose(1, 2)[real], b.keys.transpose(1, 2)[real],
                                   atol=1e-5, rtol=0)  # fmt: skip
        assert torch.isfinite(a.keys).all() and torch.isfinite(a.values).all()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_tiny_prefill_budget_gives_the_same_rollouts(arch):
    """Gemma 3's sliding layers take the single forward; the tokens agree either way."""
    model, tokenizer = tiny_model(arch, seed=5)
    common = {"n": 3, "max_new_tokens": 16, "seed": 4}
    big = generate(model, tokenizer, PROMPTS, EADSchedule(d0=5.0), **common)
    small = generate(model, tokenizer, PROMPTS, EADSchedule(d0=5.0), prefill_tokens=3, **common)
    assert torch.equal(big.response_ids, small.response_ids)
    assert torch.equal(big.prompt_ids, small.prompt_ids)
    for name in ("behaviour_logprobs", "logprobs", "entropies"):
        torch.testing.assert_close(getattr(small, name), getattr(big, name), atol=1e-4, rtol=0)


def test_bad_budget_is_refused():
    model, tokenizer = tiny_model("llama", seed=0)
    ids, mask = left_pad([[1, 2]], tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="token_budget"):
        prefill(model, ids, mask, capacity=4, forward_kwargs={"use_cache": True}, token_budget=0)


SYSTEM = "you are a careful solver of small problems; think first, then answer: "


def test_shared_prefix_length_leaves_every_row_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 3, 4, 7]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter keeps its last
    assert shared_prefix_length([[1, 2], [1, 2]]) == 1
    assert shared_prefix_length([[5, 2], [1, 2]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 0  # one prompt: nothing to share across


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("budget", [3, 16, 10**6])
def test_a_shared_prefix_computed_once_equals_one_padded_forward(arch, budget):
    model, tokenizer = tiny_model(arch, seed=3)
    rows = [tokenizer(SYSTEM + p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    assert shared_prefix_length(rows) >= 10
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    kwargs = {"use_cache": True, "output_hidden_states": True, "logits_to_keep": 1}
    with torch.no_grad():
        one = prefill(model, ids, mask, capacity=ids.shape[1] + 4, forward_kwargs=kwargs,
                      token_budget=10**6, share_prefix=False)  # fmt: skip
        shared = prefill(model, ids, mask, capacity=ids.shape[1] + 4, forward_kwargs=kwargs,
                         token_budget=budget)  # fmt: skip
    torch.testing.assert_close(shared.logits, one.logits, atol=1e-5, rtol=0)
    for a, b in zip(shared.hidden_states, one.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    real = mask.bool()
    for a, b in zip(shared.cache.layers, one.cache.layers, strict=True):
        assert a.keys.shape == b.keys.shape
        for got, want in ((a.keys, b.keys), (a.values, b.values)):
            torch.testing.assert_close(got.transpose(1, 2)[real], want.transpose(1, 2)[real],
                                       atol=1e-5, rtol=0)  # fmt: skip
            assert torch.isfinite(got).all()


@pytest.mark.parametrize("n", [1, 3])
def test_sharing_the_prefix_gives_the_same_rollouts(n):
    model, tokenizer = tiny_model("llama", seed=5)
    prompts = [SYSTEM + p for p in PROMPTS]
    common = {"n": n, "max_new_tokens": 16, "seed": 4}
    shared = generate(model, tokenizer, prompts, EADSchedule(d0=5.0), **common)
    alone = generate(model, tokenizer, prompts, EADSchedule(d0=5.0), share_prefix=False, **common)
    assert torch.equal(shared.response_ids, alone.response_ids)
    assert torch.equal(shared.prompt_ids, alone.prompt_ids)
    for name in ("behaviour_logprobs", "logprobs", "entropies"):
        torch.testing.assert_close(getattr(shared, name), getattr(alone, name), atol=1e-4, rtol=0)
