"""The chunked head: log-probs, entropies and their gradients equal autograd over full logits."""

import pytest
import torch

from calmrl.models import tiny_model
from calmrl.models.compat import decoder_and_head
from calmrl.models.functional import entropy_from_logits
from calmrl.models.head import head_logprobs_entropy
from calmrl.rl.forward import response_logprobs
from calmrl.sampling import generate
from calmrl.sampling.schedules import ConstantSchedule


def reference(hidden, weight, tokens, mask):
    logits = (hidden @ weight.t()).float()
    log_p = logits.log_softmax(-1)
    lp = log_p.gather(-1, tokens[..., None]).squeeze(-1)
    return lp * mask, entropy_from_logits(logits) * mask


def inputs(seed=0, n=3, t=5, h=8, v=11):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, t, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    tokens = torch.randint(0, v, (n, t), generator=g)
    mask = torch.ones(n, t)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    return hidden, weight, tokens, mask


@pytest.mark.parametrize("chunk", [1, 2, 4, 1024])
def test_values_and_gradients_equal_the_full_logits(chunk):
    hidden, weight, tokens, mask = inputs()
    g = torch.Generator().manual_seed(1)
    up_lp, up_h = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    lp, ent = head_logprobs_entropy(hidden, weight, tokens, mask, chunk=chunk)
    (lp * up_lp + ent * up_h).sum().backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    want_lp, want_ent = reference(hidden, weight, tokens, mask)
    (want_lp * up_lp + want_ent * up_h).sum().backward()
    torch.testing.assert_close(lp, want_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=0)
    assert (lp[mask == 0] == 0).all() and (ent[mask == 0] == 0).all()
    torch.testing.assert_close(got[0], hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], weight.grad, atol=1e-5, rtol=1e-5)
    assert (got[0][mask == 0] == 0).all()  # padding gets no gradient


def test_one_output_alone_and_a_frozen_weight():
    hidden, weight, tokens, mask = inputs(seed=3)
    weight.requires_grad_(False)
    lp, _ = head_logprobs_entropy(hidden, weight, tokens, mask, chunk=3)
    lp.sum().backward()
    h2 = hidden.detach().requires_grad_()
    reference(h2, weight, tokens, mask)[0].sum().backward()
    torch.testing.assert_close(hidden.grad, h2.grad, atol=1e-5, rtol=1e-5)
    assert weight.grad is None


def test_under_bf16_autocast_the_projection_runs_in_bf16_like_the_models_head():
    hidden, weight, tokens, mask = inputs(seed=4, h=64, v=97)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, ent = head_logprobs_entropy(hidden, weight, tokens, mask)
        logits = torch.nn.functional.linear(hidden, weight).float()  # what the model's head does
    want = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(lp, want, atol=1e-5, rtol=0)
    assert lp.dtype == ent.dtype == torch.float32


def test_an_all_padding_batch_and_a_bad_chunk():
    hidden, weight, tokens, mask = inputs()
    lp, ent = head_logprobs_entropy(hidden, weight, tokens, torch.zeros_like(mask))
    assert (lp == 0).all() and (ent == 0).all()
    with pytest.raises(ValueError, match="chunk"):
        head_logprobs_entropy(hidden, weight, tokens, mask, chunk=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("share", [True, False])
def test_the_update_forward_equals_a_plain_full_forward(arch, share):
    model, tokenizer = tiny_model(arch, seed=2)
    assert decoder_and_head(model) is not None
    rollouts = generate(model, tokenizer, ["hi", "a longer one", "7+8="], ConstantSchedule(1.0),
                        n=3, max_new_tokens=12, seed=1)  # fmt: skip
    got = response_logprobs(model, rollouts, share_prompts=share, chunk_tokens=7)
    ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], 1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.float()  # fmt: skip
    width, steps = rollouts.prompt_ids.shape[1], rollouts.response_ids.shape[1]
    h = logits[:, width - 1 : width - 1 + steps]
    on = rollouts.response_mask.bool()
    want = h.log_softmax(-1).gather(-1, rollouts.response_ids[..., None]).squeeze(-1)
    torch.testing.assert_close(got.logprobs[on], want[on], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.entropy[on], entropy_from_logits(h)[on], atol=1e-4, rtol=0)
    # The recorded rollout log-probs (tau = 1) agree too: pi_old = mu at tau 1.
    torch.testing.assert_close(got.logprobs[on], rollouts.logprobs[on], atol=1e-4, rtol=0)


def test_heads_it_cannot_reproduce_take_the_logits_path():
    model, tokenizer = tiny_model("llama", seed=2)
    rollouts = generate(model, tokenizer, ["hi", "7+8="], ConstantSchedule(1.0), n=2,
                        max_new_tokens=6, seed=1)  # fmt: skip
    chunked = response_logprobs(model, rollouts)
    model.config.final_logit_softcapping = 30.0  # a head that is not hidden @ W.T
    assert decoder_and_head(model) is None
    model.config.final_logit_softcapping = None
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.lm_head.out_features))
    assert decoder_and_head(model) is None
    plain = response_logprobs(model, rollouts)  # zero bias: the same numbers by the logits path
    torch.testing.assert_close(plain.logprobs, chunked.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.entropy, chunked.entropy, atol=1e-5, rtol=0)


def test_padding_every_row_shares_is_not_computed_and_changes_nothing():
    from dataclasses import replace

    model, tokenizer = tiny_model("llama", seed=2)
    rollouts = generate(model, tokenizer, ["hi", "7+8="], ConstantSchedule(1.0), n=2,
                        max_new_tokens=6, seed=1)  # fmt: skip
    pad = tokenizer.pad_token_id
    wide = replace(
        rollouts,
        prompt_ids=torch.nn.functional.pad(rollouts.prompt_ids, (3, 0), value=pad),
        prompt_mask=torch.nn.functional.pad(rollouts.prompt_mask, (3, 0)),
        response_ids=torch.nn.functional.pad(rollouts.response_ids, (0, 4), value=pad),
        response_mask=torch.nn.functional.pad(rollouts.response_mask, (0, 4)),
    )
    calls = []
    model.model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape[1]),
                                          with_kwargs=True)  # fmt: skip
    narrow, padded = response_logprobs(model, rollouts), response_logprobs(model, wide)
    assert calls[: len(calls) // 2] == calls[len(calls) // 2 :]  # the same widths reach the model
    assert padded.logprobs.shape == wide.response_ids.shape
    torch.testing.assert_close(padded.logprobs[:, :-4], narrow.logprobs, atol=1e-6, rtol=0)
    torch.testing.assert_close(padded.entropy[:, :-4], narrow.entropy, atol=1e-6, rtol=0)
    assert (padded.logprobs[:, -4:] == 0).all()
