"""The compile benchmark compares equal work: its static-cache rollout (the layout the compiled
step needs) decodes the same greedy tokens as the engine's in-place cache, and its break-even
arithmetic is right."""

import pytest
import torch
from transformers.cache_utils import StaticCache

from calmrl.models import tiny_model
from calmrl.sampling.kv_cache import preallocated_cache


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_compile")


def test_break_even_steps(bench):
    assert bench.break_even_steps(60.0, 0.30, 0.20) == pytest.approx(600.0)
    assert bench.break_even_steps(60.0, 0.30, 0.30) is None  # not faster: never pays
    assert bench.break_even_steps(60.0, 0.30, 0.50) is None


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_static_and_in_place_caches_decode_the_same_greedy_tokens(bench, arch):
    model, _ = tiny_model(arch, seed=3)
    prompt = torch.randint(
        5, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(0)
    )
    steps = 6
    with bench.precision("fp32"):
        in_place = bench.greedy_rollout(
            model, preallocated_cache(model, 7 + steps), prompt, steps, static=False
        )
        static = bench.greedy_rollout(
            model, StaticCache(config=model.config, max_cache_len=7 + steps), prompt, steps,
            static=True,
        )  # fmt: skip
        # Both equal an uncached forward's greedy continuation.
        ids = prompt
        for _ in range(steps + 1):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert in_place.tokens.shape == (3, steps + 1) and len(in_place.step_s) == steps
    assert torch.equal(in_place.tokens, static.tokens)
    assert torch.equal(in_place.tokens, ids[:, 7:])
