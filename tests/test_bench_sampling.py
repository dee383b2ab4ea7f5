"""The benchmark's kernel floor times exactly the matmul and attention shapes the engine runs."""

import pytest
import torch.nn.functional as F

from calmrl.sampling import generate
from calmrl.sampling.prefill import shared_prefix_length
from calmrl.sampling.schedules import ConstantSchedule


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_sampling")


def _recorded_shapes(monkeypatch, run) -> tuple[set, set]:
    """(weight shape, rows) of every ``F.linear`` and (query shape, key shape) of every
    attention call made by ``run``."""
    linears, attentions = set(), set()
    linear, attention = F.linear, F.scaled_dot_product_attention

    def record_linear(x, weight, *args, **kwargs):
        linears.add((tuple(weight.shape), x.numel() // x.shape[-1]))
        return linear(x, weight, *args, **kwargs)

    def record_attention(query, key, *args, **kwargs):
        attentions.add((tuple(query.shape), tuple(key.shape)))
        return attention(query, key, *args, **kwargs)

    monkeypatch.setattr(F, "linear", record_linear)
    monkeypatch.setattr(F, "scaled_dot_product_attention", record_attention)
    run()
    monkeypatch.undo()
    return linears, attentions


def test_kernel_floor_times_the_engines_shapes(bench, tiny, monkeypatch):
    model, tokenizer = tiny
    prompts = [[5 + i for i in range(length)] for length in (7, 3, 11, 7)]
    lengths, new_tokens = [len(p) for p in prompts], 5
    shared = shared_prefix_length(prompts)
    assert shared == 2  # prefilled once, on one row

    engine_linears, engine_attention = _recorded_shapes(
        monkeypatch,
        lambda: generate(
            model, tokenizer, prompts, ConstantSchedule(1.0), max_new_tokens=new_tokens,
            seed=0, ignore_eos=True, linear_kernel="torch",  # F.linear, which is recorded
        ),
    )  # fmt: skip
    floor = {}
    floor_linears, floor_attention = _recorded_shapes(
        monkeypatch,
        lambda: floor.update(
            bench.kernel_floor(model, lengths, len(prompts), new_tokens, shared=shared)
        ),
    )

    assert floor_linears == engine_linears
    # The floor times the decode attention at the first and the last step only.
    assert floor_attention <= engine_attention
    width = max(lengths)
    decode_keys = {key[-2] for _, key in floor_attention if key[-2] > width}
    assert decode_keys == {width + 1, width + new_tokens - 1}
    assert set(floor) == {
        "prefill matmuls", "prefill attention", "decode matmuls", "decode attention"
    }  # fmt: skip
    assert all(seconds > 0 for seconds in floor.values())


def test_kernel_floor_scales_decode_with_the_steps(bench, tiny, monkeypatch):
    """Decode time is one step's kernels times ``new_tokens - 1``: the steps the engine runs
    after the prefill's logits give the first token."""
    model, _ = tiny
    monkeypatch.setattr(bench, "_seconds", lambda run, repeats=3: (run(), 1.0)[1])
    layers = model.config.num_hidden_layers
    floor = bench.kernel_floor(model, [4, 6], batch=2, new_tokens=9)
    assert floor["decode matmuls"] == 8.0
    assert floor["decode attention"] == 8.0 * layers
    assert floor["prefill matmuls"] == 1.0  # both prompts in one bucket
    assert floor["prefill attention"] == 1.0 * layers
