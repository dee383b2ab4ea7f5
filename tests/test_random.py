"""Per-row randomness: SplitMix64 against a pure-Python reference, exact sampling, and a row's
tokens independent of its batch."""

from __future__ import annotations

import pytest
import torch

from calmrl.models import tiny_model
from calmrl.sampling import HFBackend, Method
from calmrl.sampling.random import (
    _invert,
    derive_seed,
    mix64,
    row_seeds,
    sample_tokens,
    uniforms,
)

MASK = (1 << 64) - 1


def splitmix_finaliser(x: int) -> int:
    """Steele et al. 2014, on unsigned Python integers."""
    x &= MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def test_mix64_equals_the_reference_on_edge_and_random_words():
    words = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, *torch.randint(0, 2**62, (50,)).tolist()]
    signed = [w - (1 << 64) if w >= 1 << 63 else w for w in words]
    got = mix64(torch.tensor(signed, dtype=torch.long)).tolist()
    assert [g & MASK for g in got] == [splitmix_finaliser(w) for w in words]


def test_uniforms_lie_in_unit_interval_and_look_uniform():
    seeds = row_seeds(0, 0, range(4000), 4)
    u = torch.stack([uniforms(seeds, t) for t in range(3)]).flatten()
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    assert len(set(seeds.tolist())) == len(seeds)  # distinct streams per (prompt, sample)


def test_sample_tokens_draws_from_the_distribution_and_never_a_zero_mass_token():
    probs = torch.tensor([0.1, 0.0, 0.2, 0.7, 0.0])
    seeds = row_seeds(3, 1, range(20_000), 1)
    tokens = sample_tokens(probs.log().expand(len(seeds), -1), seeds, t=5)
    frequencies = torch.bincount(tokens, minlength=5).double() / len(seeds)
    torch.testing.assert_close(frequencies, probs.double(), atol=0.01, rtol=0)
    assert frequencies[1] == 0 and frequencies[4] == 0


def _plain_inverse_cdf(log_probs: torch.Tensor, seeds: torch.Tensor, t: int) -> torch.Tensor:
    """The reference: plain ``exp``, one float64 cumsum over the vocabulary, one search."""
    cdf = log_probs.exp().double().cumsum(-1)
    target = uniforms(seeds, t).unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


def test_sharp_distributions_give_the_tokens_of_the_plain_inverse_cdf():
    """Masses below 3.2e-38 are dropped for speed: the tokens equal those of exp + cumsum."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 5000, generator=generator) * 4
    logits[:, ::7] = float("-inf")  # truncated tokens
    log_probs = (logits / 0.1).log_softmax(-1)  # tau = 0.1: most masses underflow fp32
    assert (log_probs[torch.isfinite(log_probs)] < -87.3).float().mean() > 0.5
    seeds = row_seeds(1, 2, range(256), 1)
    for t in range(4):
        got = sample_tokens(log_probs, seeds, t)
        assert torch.equal(got, _plain_inverse_cdf(log_probs, seeds, t))
        assert torch.isfinite(log_probs.gather(-1, got[:, None])).all()


def test_row_seeds_depend_on_every_part():
    base = row_seeds(0, 0, [7], 2)
    for other in (row_seeds(1, 0, [7], 2), row_seeds(0, 1, [7], 2), row_seeds(0, 0, [8], 2)):
        assert not set(base.tolist()) & set(other.tolist())
    assert derive_seed(0, 3, "update") != derive_seed(0, 3, "clip-cov")


@pytest.mark.parametrize("method", ["constant", "ead-paper", "ead-entropy"])
def test_a_prompt_alone_and_inside_a_batch_of_16_gets_identical_tokens(method):
    model, tokenizer = tiny_model("llama", seed=2)
    prompts = [f"prompt number {i}" + "x" * (i % 5) for i in range(16)]
    params = {"tau": 1.0} if method == "constant" else {}
    common = {"n": 3, "max_new_tokens": 24, "seed": 11, "step": 4}
    backend = HFBackend(model, tokenizer, batch_size=5)  # compaction and several batches
    batch = backend.generate(prompts, Method(method, params), **common)
    alone = HFBackend(model, tokenizer).generate(
        [prompts[9]], Method(method, params), prompt_indices=[9], **common
    )
    rows = torch.arange(27, 30)
    width = alone.response_ids.shape[1]
    assert torch.equal(batch.response_ids[rows, :width], alone.response_ids)
    assert torch.equal(batch.response_mask[rows, :width], alone.response_mask)
    assert batch.response_mask[rows, width:].sum() == 0
    on = alone.response_mask.bool()
    for name in ("behaviour_logprobs", "logprobs", "entropies", "temperatures"):
        torch.testing.assert_close(
            getattr(batch, name)[rows, :width][on], getattr(alone, name)[on], atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("vocab", [256, 700, 5000])
def test_two_level_inverse_cdf_equals_one_cumsum_over_the_vocabulary(vocab):
    """Block boundaries, a vocabulary that is no multiple of the block, empty blocks and all
    mass on a block's edge tokens give the tokens of one float64 cumsum."""
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(512, vocab, generator=generator) * 3
    logits[:128, 1:] = float("-inf")  # all mass on the first token
    logits[128:256, :-1] = float("-inf")  # ... on the last (after the padding block, if any)
    logits[256:384, 300 % vocab :] = float("-inf")  # whole empty blocks at the end
    logits[256:384, 255] = 2.0  # a block's last token
    log_probs = logits.log_softmax(-1)
    seeds = row_seeds(5, 0, range(512), 1)
    for t in range(3):
        assert torch.equal(
            sample_tokens(log_probs, seeds, t), _plain_inverse_cdf(log_probs, seeds, t)
        )
    assert (sample_tokens(log_probs[:128], seeds[:128], 0) == 0).all()
    assert (sample_tokens(log_probs[128:256], seeds[128:256], 0) == vocab - 1).all()


def test_invert_takes_the_last_token_with_mass_when_the_target_reaches_the_end():
    cdf = torch.tensor([[0.25, 0.25, 1.0, 1.0], [0.0, 0.5, 0.5, 0.5]], dtype=torch.float64)
    assert _invert(cdf, torch.tensor([[1.0], [0.7]], dtype=torch.float64)).tolist() == [[2], [1]]
    # A target on a step's value belongs to the next token with mass, never a zero-mass one.
    assert _invert(cdf, torch.tensor([[0.25], [0.0]], dtype=torch.float64)).tolist() == [[2], [1]]
