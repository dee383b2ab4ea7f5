"""The engine's recorded log-probs equal an uncached full forward pass over the same tokens."""

import pytest
import torch
from transformers import LogitsProcessorList

from calmrl.integrations.hf_generate import ScheduledTemperatureProcessor
from calmrl.models import tiny_model
from calmrl.sampling import generate, sampling_log_probs
from calmrl.sampling.schedules import ConstantSchedule, EADSchedule

PROMPTS = ["hi", "a much longer prompt that needs left padding", "7+8=", "y"]


def recompute(model, rollouts, schedule, *, step=0, top_k=None, top_p=None, min_p=None):
    """Full forward over prompt+response (no cache); the formulas of DESIGN 3.2 by hand."""
    ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], dim=1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    width = rollouts.prompt_ids.shape[1]
    steps = rollouts.response_ids.shape[1]
    h = logits[:, width - 1 : width - 1 + steps]  # logits that predicted each response token
    target = h.log_softmax(-1)
    entropy = -(target.exp() * target).sum(-1)
    tau = schedule.temperatures(torch.arange(steps).expand(len(ids), steps), step)
    flat = sampling_log_probs(
        h.reshape(-1, h.shape[-1]), tau.reshape(-1), top_k=top_k, top_p=top_p, min_p=min_p
    ).view_as(h)
    token = rollouts.response_ids.unsqueeze(-1)
    return {
        "temperatures": tau,
        "behaviour_logprobs": flat.gather(-1, token).squeeze(-1),
        "logprobs": target.gather(-1, token).squeeze(-1),
        "entropies": entropy,
    }


CASES = [
    ("constant-1.0", ConstantSchedule(1.0), {}),
    ("constant-0.6-topk", ConstantSchedule(0.6), {"top_k": 20}),
    ("ead-topp", EADSchedule(d0=5.0, warmup_tokens=3), {"top_p": 0.9}),
    ("ead-minp-step", EADSchedule(tau_min=0.3, d0=4.0, alpha=2.0), {"min_p": 0.05, "top_k": 50}),
]


@pytest.mark.parametrize("kernel", ["torch", "onednn"])  # the full forward runs F.linear
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize(("name", "schedule", "truncation"), CASES, ids=[c[0] for c in CASES])
def test_recorded_logprobs_match_full_forward(arch, name, schedule, truncation, kernel):
    model, tokenizer = tiny_model(arch, seed=1)
    step = 7
    rollouts = generate(
        model, tokenizer, PROMPTS, schedule, n=3, max_new_tokens=24, seed=0, step=step,
        linear_kernel=kernel, **truncation,
    )  # fmt: skip
    assert rollouts.response_ids.shape[0] == len(PROMPTS) * 3
    expected = recompute(model, rollouts, schedule, step=step, **truncation)
    on = rollouts.response_mask.bool()
    for field, value in expected.items():
        got = getattr(rollouts, field)
        torch.testing.assert_close(got[on], value[on].float(), atol=1e-4, rtol=0, msg=field)
        assert (got[~on] == 0).all(), field
    # Behaviour log-probs are finite: every sampled token lay inside the truncated support.
    assert torch.isfinite(rollouts.behaviour_logprobs[on]).all()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_recorded_logprobs_match_full_forward_with_a_shared_prefix(arch):
    """Prompts that start alike: their common prefix is prefilled once (``share_prefix``)."""
    model, tokenizer = tiny_model(arch, seed=1)
    prompts = ["a system prompt every row starts with, then: " + p for p in PROMPTS]
    _, schedule, truncation = CASES[2]
    rollouts = generate(
        model, tokenizer, prompts, schedule, n=2, max_new_tokens=16, seed=0, **truncation
    )
    expected = recompute(model, rollouts, schedule, **truncation)
    on = rollouts.response_mask.bool()
    for field, value in expected.items():
        got = getattr(rollouts, field)
        torch.testing.assert_close(got[on], value[on].float(), atol=1e-4, rtol=0, msg=field)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_recorded_logprobs_match_full_forward_without_padding(arch, monkeypatch):
    """One prompt's n rows need no padding mask: transformers drops it, and the decode steps
    take the packed attention (``models.attention``) in fp32 too."""
    import calmrl.models.attention as attention

    calls = []
    real = attention.packed_decode_attention
    monkeypatch.setattr(
        attention, "packed_decode_attention", lambda *a: calls.append(a) or real(*a)
    )
    model, tokenizer = tiny_model(arch, seed=1)
    schedule = ConstantSchedule(1.0)
    rollouts = generate(model, tokenizer, ["7+8="], schedule, n=4, max_new_tokens=12, seed=0)
    assert calls and all(query.shape[2] == 1 for query, *_ in calls)
    expected = recompute(model, rollouts, schedule)
    on = rollouts.response_mask.bool()
    for field, value in expected.items():
        got = getattr(rollouts, field)
        torch.testing.assert_close(got[on], value[on].float(), atol=1e-4, rtol=0, msg=field)


def test_eos_mid_batch_and_masks():
    model, tokenizer = tiny_model("llama", seed=1)
    eos = tokenizer.eos_token_id
    rollouts = generate(
        model, tokenizer, PROMPTS, ConstantSchedule(1.5), n=8, max_new_tokens=40, seed=3
    )
    lengths = rollouts.response_lengths
    ended = [i for i, r in enumerate(rollouts.finish_reasons) if r == "eos"]
    assert ended and len(ended) < len(rollouts), "need rows ending early and rows running on"
    for i in range(len(rollouts)):
        n = int(lengths[i])
        row = rollouts.response_ids[i]
        assert rollouts.response_mask[i, :n].all() and not rollouts.response_mask[i, n:].any()
        assert (row[n:] == tokenizer.pad_token_id).all()
        if rollouts.finish_reasons[i] == "eos":
            assert row[n - 1] == eos and (row[: n - 1] != eos).all()
        else:
            assert n == 40 and (row[:n] != eos).all()
    assert rollouts.group_index.tolist() == [g for g in range(len(PROMPTS)) for _ in range(8)]


def test_same_seed_same_tokens_and_different_seed_differs():
    model, tokenizer = tiny_model("llama", seed=2)
    run = lambda seed: generate(  # noqa: E731
        model, tokenizer, PROMPTS, EADSchedule(), n=2, max_new_tokens=16, seed=seed
    )
    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.behaviour_logprobs, b.behaviour_logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_batch_size_chunks_match_one_batch_shapes_and_groups():
    model, tokenizer = tiny_model("llama", seed=2)
    rollouts = generate(
        model,
        tokenizer,
        PROMPTS,
        ConstantSchedule(1.0),
        n=3,
        max_new_tokens=8,
        seed=0,
        batch_size=5,
    )
    assert len(rollouts) == 12 and len(rollouts.texts) == 12
    assert rollouts.group_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    expected = recompute(model, rollouts, ConstantSchedule(1.0))
    on = rollouts.response_mask.bool()
    torch.testing.assert_close(rollouts.logprobs[on], expected["logprobs"][on], atol=1e-4, rtol=0)


def test_stop_strings_end_rows_and_cut_text():
    model, tokenizer = tiny_model("llama", seed=1)
    free = generate(model, tokenizer, ["hi"], ConstantSchedule(1.0), n=4, max_new_tokens=30, seed=0)
    row = max(range(4), key=lambda i: len(free.texts[i]))
    stop = free.texts[row][3:5]  # a string this row is known to produce
    assert len(stop) == 2
    rollouts = generate(
        model, tokenizer, ["hi"], ConstantSchedule(1.0), n=4, max_new_tokens=30, seed=0, stop=[stop]
    )
    assert rollouts.finish_reasons[row] == "stop"
    assert stop not in rollouts.texts[row]
    assert free.texts[row].startswith(rollouts.texts[row])


def test_ead_temperatures_recorded_per_position():
    model, tokenizer = tiny_model("llama", seed=1)
    schedule = EADSchedule(tau_min=0.2, d0=3.0, warmup_tokens=2)
    rollouts = generate(model, tokenizer, ["x"], schedule, n=2, max_new_tokens=12, seed=0, step=4)
    t = torch.arange(rollouts.response_ids.shape[1])
    expected = schedule.temperatures(t, step=4)
    n = int(rollouts.response_lengths[0])
    torch.testing.assert_close(rollouts.temperatures[0, :n], expected[:n])


def test_invalid_arguments_raise():
    model, tokenizer = tiny_model("llama")
    for kwargs, field in [
        ({"n": 0}, "n"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
    ]:
        with pytest.raises(ValueError, match=field):
            generate(model, tokenizer, ["x"], ConstantSchedule(1.0), **kwargs)
    with pytest.raises(ValueError, match="prompts"):
        generate(model, tokenizer, [], ConstantSchedule(1.0))
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        generate(model, tokenizer, ["x", ""], ConstantSchedule(1.0))


def test_hf_logits_processor_applies_schedule():
    model, tokenizer = tiny_model("llama", seed=1)
    schedule = EADSchedule(tau_min=0.2, d0=3.0, warmup_tokens=1)
    ids = tokenizer(["hello"], return_tensors="pt")
    seen = []

    class Spy(ScheduledTemperatureProcessor):
        def __call__(self, input_ids, scores):
            out = super().__call__(input_ids, scores)
            seen.append((scores / out)[0, 0].item())
            return out

    model.generate(
        **ids,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        max_new_tokens=6,
        min_new_tokens=6,
        logits_processor=LogitsProcessorList([Spy(schedule, step=0)]),
    )
    expected = schedule.temperatures(torch.arange(6)).tolist()
    assert seen == pytest.approx(expected, rel=1e-5)


def test_ignore_eos_runs_every_row_to_max_new_tokens():
    model, tokenizer = tiny_model("llama", seed=1)
    rollouts = generate(
        model, tokenizer, PROMPTS, ConstantSchedule(1.5), n=8, max_new_tokens=40, seed=3,
        ignore_eos=True,
    )  # fmt: skip
    assert (rollouts.response_lengths == 40).all()
    assert set(rollouts.finish_reasons) == {"length"}
    assert (rollouts.response_ids == tokenizer.eos_token_id).any()  # EOS drawn, not obeyed


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_the_in_place_cache_and_hfs_growing_cache_give_identical_rollouts(arch):
    """Same seed, same tokens and log-probs, with compaction (rows end at different times)."""
    model, tokenizer = tiny_model(arch, seed=5)
    prompts = ["a", "a longer prompt here", "xyz"]
    common = {"n": 4, "max_new_tokens": 20, "seed": 3}
    fast = generate(model, tokenizer, prompts, EADSchedule(d0=5.0), **common)
    slow = generate(
        model, tokenizer, prompts, EADSchedule(d0=5.0), preallocate_cache=False, **common
    )
    assert fast.finish_reasons == slow.finish_reasons
    assert arch != "llama" or "eos" in fast.finish_reasons  # compaction was exercised
    assert torch.equal(fast.response_ids, slow.response_ids)
    for name in ("behaviour_logprobs", "logprobs", "entropies"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("poison", "fails"), [(float("nan"), True), (float("inf"), True),
                                               (float("-inf"), False)])  # fmt: skip
def test_nan_or_plus_inf_logits_stop_generation_and_minus_inf_is_a_banned_token(poison, fails):
    from calmrl.sampling.engine import NonFiniteLogitsError

    model, tokenizer = tiny_model("llama", seed=1)

    def hook(_module, _inputs, out):
        out[..., 7] = poison
        return out

    model.lm_head.register_forward_hook(hook)
    run = lambda: generate(model, tokenizer, ["hi"], ConstantSchedule(1.0), n=2,  # noqa: E731
                           max_new_tokens=4, seed=0)  # fmt: skip
    if fails:
        with pytest.raises(NonFiniteLogitsError, match="non-finite logits at generated token 0"):
            run()
    else:
        assert (run().response_ids[run().response_mask.bool()] != 7).all()
