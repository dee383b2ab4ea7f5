"""The update benchmark counts the prompt tokens the update's forward really runs."""

import contextlib

import pytest

from calmrl.models import tiny_model
from calmrl.sampling import generate
from calmrl.sampling.schedules import ConstantSchedule


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_update")


@pytest.mark.parametrize("way", ["plain", "group", "prefix"])
def test_prompt_tokens_are_the_tokens_the_update_embeds_for_prompts(bench, way):
    model, tokenizer = tiny_model(seed=4)
    prompts = ["Q: a", "Q: a longer prompt", "Q: xyz"]
    rollouts = generate(model, tokenizer, prompts, ConstantSchedule(1.0), n=3,
                        max_new_tokens=5, seed=1)  # fmt: skip
    micros = bench.micro_batches(rollouts, 4)
    assert [len(m) for m in micros] == [4, 4, 1]
    embedded: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: embedded.append(args[0].numel())
    )
    bench.update_step(model.train(), rollouts, micros, contextlib.nullcontext, *bench.WAYS[way])
    hook.remove()
    responses = 0  # the response tokens each micro-batch's forward embeds, padding included
    for micro in micros:
        steps = int(micro.response_mask.any(0).nonzero()[-1]) + 1  # trailing padding is cut
        # One forward over prompt + response where nothing is shared: "plain", and a
        # micro-batch of one row per group without a prefix.
        one_per_group = len(set(micro.group_index.tolist())) == len(micro)
        whole = way == "plain" or (way == "group" and one_per_group)
        responses += len(micro) * (steps if whole else steps - 1)
    assert sum(embedded) - responses == bench.prompt_tokens(micros, way)
    if way == "prefix":  # "Q: " once for its keys and values, once more for its backward
        assert embedded[0] == embedded[-1] == 3
