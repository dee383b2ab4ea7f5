"""Losses, KL estimators, entropy and TIS: hand-computed cases, edge cases and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from calmrl.models.functional import entropy_from_logits
from calmrl.rl.importance import tis_weights
from calmrl.rl.losses import (
    clip_cov_policy_loss,
    entropy_regularization,
    kl_cov_policy_loss,
    kl_penalty,
    policy_loss,
    value_loss,
)
from calmrl.rl.reductions import AGG_MODES, aggregate, masked_mean

# --- aggregation -----------------------------------------------------------------------------

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the last row is an empty response
AGG_EXPECTED = {
    "token-mean": 7 / 3,  # (1 + 2 + 4) / 3 tokens
    "token-sum": 7.0,
    "seq-mean-token-sum": 3.5,  # (3 + 4) / 2 non-empty rows
    "seq-mean-token-mean": 2.75,  # (1.5 + 4) / 2
    "seq-mean-token-sum-norm": 3.5 / 3,  # / T
}


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_hand_computed(mode: str) -> None:
    assert aggregate(LOSS, MASK, mode).item() == pytest.approx(AGG_EXPECTED[mode])
    assert aggregate(LOSS, MASK.bool(), mode).item() == pytest.approx(AGG_EXPECTED[mode])


def test_aggregate_loss_scale_factor() -> None:
    out = aggregate(LOSS, MASK, "seq-mean-token-sum-norm", loss_scale_factor=7)
    assert out.item() == pytest.approx(0.5)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_ignores_padding_even_nan(mode: str) -> None:
    junk = torch.where(MASK.bool(), LOSS, torch.tensor(float("nan")))
    assert aggregate(junk, MASK, mode).item() == pytest.approx(AGG_EXPECTED[mode])


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_all_empty_is_zero(mode: str) -> None:
    out = aggregate(LOSS, torch.zeros_like(MASK), mode)
    assert out.item() == 0.0


def test_aggregate_rejects_unknown_mode_and_shape() -> None:
    with pytest.raises(ValueError, match=r"mode must be one of .*token-mean"):
        aggregate(LOSS, MASK, "mean")
    with pytest.raises(ValueError, match="same shape"):
        aggregate(LOSS, MASK[:, :2], "token-mean")


def test_masked_mean() -> None:
    assert masked_mean(LOSS, MASK).item() == pytest.approx(7 / 3)
    assert masked_mean(LOSS, torch.zeros_like(MASK)).item() == 0.0


# --- PPO policy loss -------------------------------------------------------------------------

# One row, four tokens: ratios 1.5, 0.5, 5, 0.5 with advantages 1, 1, -1, -2.
RATIOS = torch.tensor([[1.5, 0.5, 5.0, 0.5]])
ADV = torch.tensor([[1.0, 1.0, -1.0, -2.0]])
OLD = torch.full((1, 4), -1.0)
ONES = torch.ones(1, 4)


def _logprobs() -> torch.Tensor:
    return (OLD + RATIOS.log()).requires_grad_(True)


def test_policy_loss_hand_computed() -> None:
    logprobs = _logprobs()
    loss, metrics = policy_loss(logprobs, OLD, ADV, ONES)
    # Token losses: max(-1.5, -1.2) = -1.2 (clipped); max(-0.5, -0.8) = -0.5;
    # max(5, 1.2) = 5 -> dual-clip min(5, 3) = 3; max(1, 1.6) = 1.6 (clipped).
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 3.0 + 1.6) / 4)
    assert metrics["clipfrac"].item() == pytest.approx(0.5)
    assert metrics["clipfrac_lower"].item() == pytest.approx(0.25)
    approx_kl = -sum(math.log(r) for r in (1.5, 0.5, 5.0, 0.5)) / 4
    assert metrics["approx_kl"].item() == pytest.approx(approx_kl, rel=1e-5)
    loss.backward()
    # Only the unclipped token carries a gradient: d(-A r)/d logp = -A r, over 4 tokens.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.5 / 4, 0.0, 0.0]]))


def test_policy_loss_clip_higher() -> None:
    loss, _ = policy_loss(_logprobs(), OLD, ADV, ONES, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 3.0 + 1.6) / 4)


def test_policy_loss_tis_weights_multiply_after_clipping() -> None:
    weights = torch.tensor([[2.0, 1.0, 1.0, 0.5]], requires_grad=True)
    loss, _ = policy_loss(_logprobs(), OLD, ADV, ONES, tis_weights=weights)
    assert loss.item() == pytest.approx((-2.4 - 0.5 + 3.0 + 0.8) / 4)
    loss.backward()
    assert weights.grad is None  # detached


def test_policy_loss_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="clip_ratio_c"):
        policy_loss(_logprobs(), OLD, ADV, ONES, clip_ratio_c=1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        policy_loss(_logprobs(), OLD, ADV, ONES, agg="sum")


def test_policy_loss_empty_responses_are_zero_not_nan() -> None:
    logprobs = _logprobs()
    loss, metrics = policy_loss(logprobs, OLD, ADV, torch.zeros(1, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert all(v.item() == 0.0 for v in metrics.values())
    assert torch.all(logprobs.grad == 0)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    clip_low=st.floats(0.05, 0.5),
    clip_high=st.floats(0.05, 0.5),
    mode=st.sampled_from(AGG_MODES),
)
def test_policy_loss_clipping_inactive_inside_trust_region(
    seed: int, clip_low: float, clip_high: float, mode: str
) -> None:
    g = torch.Generator().manual_seed(seed)
    lo, hi = math.log(1 - clip_low), math.log(1 + clip_high)
    log_ratio = lo + (hi - lo) * (0.01 + 0.98 * torch.rand(3, 5, generator=g, dtype=torch.float64))
    old = -torch.rand(3, 5, generator=g, dtype=torch.float64)
    a = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 5, generator=g) < 0.7
    logprobs = (old + log_ratio).requires_grad_(True)
    loss, metrics = policy_loss(
        logprobs, old, a, mask, clip_low=clip_low, clip_high=clip_high, agg=mode
    )
    vanilla_pg = aggregate(-a * torch.exp(logprobs - old), mask, mode)
    torch.testing.assert_close(loss, vanilla_pg)
    assert metrics["clipfrac"].item() == 0.0
    assert metrics["clipfrac_lower"].item() == 0.0
    grad = torch.autograd.grad(loss, logprobs)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(vanilla_pg, logprobs)[0])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), mode=st.sampled_from(AGG_MODES))
def test_policy_losses_padding_values_change_nothing(seed: int, mode: str) -> None:
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(3, 6, generator=g) * 3
    logprobs = old + 0.5 * torch.randn(3, 6, generator=g)
    a = 2 * torch.randn(3, 6, generator=g)
    mask = torch.rand(3, 6, generator=g) < 0.6
    noise = 5 * torch.randn(3, 3, 6, generator=g)

    def pad(x: torch.Tensor, k: int) -> torch.Tensor:
        return torch.where(mask, x, x + noise[k])

    for fn in (policy_loss, clip_cov_policy_loss, kl_cov_policy_loss):
        kwargs = {"agg": mode}
        if fn is clip_cov_policy_loss:
            kwargs["generator"] = torch.Generator().manual_seed(0)
        loss, metrics = fn(logprobs, old, a, mask, **kwargs)
        if fn is clip_cov_policy_loss:
            kwargs["generator"] = torch.Generator().manual_seed(0)
        loss2, metrics2 = fn(pad(logprobs, 0), pad(old, 1), pad(a, 2), mask, **kwargs)
        torch.testing.assert_close(loss2, loss)
        for key, value in metrics.items():
            torch.testing.assert_close(metrics2[key], value)


# --- Clip-Cov and KL-Cov ---------------------------------------------------------------------

# Advantages with mean 0 and log-probs with mean -2: cov = (A - 0) * (logp + 2) = [4.5, .5, .5, .5].
COV_ADV = torch.tensor([[3.0, -1.0, -1.0, -1.0]])
COV_LOGP = torch.tensor([[-0.5, -2.5, -2.5, -2.5]])


def test_clip_cov_hand_computed() -> None:
    logprobs = COV_LOGP.clone().requires_grad_(True)
    loss, metrics = clip_cov_policy_loss(logprobs, COV_LOGP, COV_ADV, ONES)
    # Ratios are 1: only token 0 lies in (lb=1, ub=5); one token is detached (max(1, 4 * 2e-4)).
    assert loss.item() == pytest.approx(3.0 / 4)
    assert metrics["clipfrac"].item() == pytest.approx(0.25)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.25, 0.25, 0.25]]))
    # With ub below 4.5 no token qualifies and the loss is plain PG: mean(-A) = 0.
    loss_none, metrics_none = clip_cov_policy_loss(COV_LOGP, COV_LOGP, COV_ADV, ONES, clip_cov_ub=4)
    assert loss_none.item() == pytest.approx(0.0)
    assert metrics_none["clipfrac"].item() == 0.0


def test_clip_cov_skips_ppo_clipped_tokens() -> None:
    # Token 0 has ratio 1.5 > 1 + 0.2 with A > 0, so PPO already clips it: not a candidate.
    old = COV_LOGP - torch.tensor([[math.log(1.5), 0.0, 0.0, 0.0]])
    loss, metrics = clip_cov_policy_loss(COV_LOGP, old, COV_ADV, ONES)
    assert metrics["clipfrac"].item() == 0.0
    assert loss.item() == pytest.approx((-3 * 1.2 + 3.0) / 4)


def test_clip_cov_draw_follows_the_generator() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 50, generator=g) * 3
    logp = -torch.rand(8, 50, generator=g) * 3
    mask = torch.ones(8, 50)

    def run(seed: int) -> torch.Tensor:
        logprobs = logp.clone().requires_grad_(True)
        loss, metrics = clip_cov_policy_loss(
            logprobs,
            logp,
            a,
            mask,
            clip_cov_ratio=0.02,
            generator=torch.Generator().manual_seed(seed),
        )
        assert metrics["clipfrac"].item() == pytest.approx(int(0.02 * 400) / 400)
        loss.backward()
        return logprobs.grad == 0  # the detached tokens

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_kl_cov_hand_computed() -> None:
    old = COV_LOGP - torch.tensor([[0.1, 0.0, 0.0, 0.0]])
    loss, metrics = kl_cov_policy_loss(COV_LOGP, old, COV_ADV, ONES)
    # Top-1 covariance is token 0: -3 e^0.1 + 1 * |0.1|; the others give -(-1) * 1.
    assert loss.item() == pytest.approx((-3 * math.exp(0.1) + 0.1 + 3.0) / 4, rel=1e-5)
    assert metrics["kl_cov_frac"].item() == pytest.approx(0.25)
    assert metrics["kl_abs"].item() == pytest.approx(0.1 / 4, rel=1e-5)
    loss_coef, _ = kl_cov_policy_loss(COV_LOGP, old, COV_ADV, ONES, ppo_kl_coef=0.1)
    assert loss_coef.item() == pytest.approx((-3 * math.exp(0.1) + 0.01 + 3.0) / 4, rel=1e-5)


@pytest.mark.parametrize("fn", [clip_cov_policy_loss, kl_cov_policy_loss])
def test_cov_losses_empty_responses_and_bad_ratio(fn) -> None:
    loss, metrics = fn(COV_LOGP, COV_LOGP, COV_ADV, torch.zeros(1, 4))
    assert loss.item() == 0.0
    assert all(v.item() == 0.0 for v in metrics.values())
    ratio_name = "clip_cov_ratio" if fn is clip_cov_policy_loss else "kl_cov_ratio"
    with pytest.raises(ValueError, match=ratio_name):
        fn(COV_LOGP, COV_LOGP, COV_ADV, ONES, **{ratio_name: 0.0})


# --- value loss ------------------------------------------------------------------------------


def test_value_loss_hand_computed() -> None:
    pred = torch.tensor([[1.0, 0.0, 9.0]])
    old = torch.zeros(1, 3)
    returns = torch.tensor([[2.0, -1.0, 0.0]])
    loss, metrics = value_loss(pred, old, returns, torch.tensor([[1, 1, 0]]), clip_range=0.5)
    # V_clip = [0.5, 0]; errors max((1, 2.25), (1, 1)) = [2.25, 1]; 0.5 * mean = 0.8125.
    assert loss.item() == pytest.approx(0.8125)
    assert metrics["vf_clipfrac"].item() == pytest.approx(0.5)


# --- KL estimators ---------------------------------------------------------------------------

LOG2 = math.log(2)


@pytest.mark.parametrize(
    ("kind", "expected_pos", "expected_neg"),
    [
        ("kl", LOG2, -LOG2),
        ("k1", LOG2, -LOG2),
        ("abs", LOG2, LOG2),
        ("mse", 0.5 * LOG2**2, 0.5 * LOG2**2),
        ("k2", 0.5 * LOG2**2, 0.5 * LOG2**2),
        ("low_var_kl", 0.5 + LOG2 - 1, 2 - LOG2 - 1),
        ("k3", 0.5 + LOG2 - 1, 2 - LOG2 - 1),
    ],
)
def test_kl_penalty_hand_computed(kind: str, expected_pos: float, expected_neg: float) -> None:
    logp = torch.tensor([math.log(0.5), math.log(0.25)])
    ref = torch.tensor([math.log(0.25), math.log(0.5)])
    out = kl_penalty(logp, ref, kind)
    torch.testing.assert_close(out, torch.tensor([expected_pos, expected_neg]))


def test_kl_low_var_is_clamped() -> None:
    out = kl_penalty(torch.tensor([-60.0, 0.0]), torch.tensor([0.0, -60.0]), "k3")
    # d = -60: exp(20) - 20 - 1 clamps to 10; d = 60: exp(-20) + 20 - 1 clamps to 10.
    torch.testing.assert_close(out, torch.tensor([10.0, 10.0]))


def test_kl_straight_through_keeps_value_takes_k2_gradient() -> None:
    logp = torch.tensor([math.log(0.5), math.log(0.25)], requires_grad=True)
    ref = torch.tensor([math.log(0.25), math.log(0.5)])
    out = kl_penalty(logp, ref, "k3+")
    torch.testing.assert_close(out, kl_penalty(logp, ref, "k3").detach())
    out.sum().backward()
    torch.testing.assert_close(logp.grad, (logp - ref).detach())


def test_kl_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"kind must be one of .*low_var_kl"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-15, 15, allow_subnormal=False), min_size=2, max_size=10))
@example([0.0, 4.825915879507159e-15])  # a case hypothesis found
def test_kl_estimators_nonnegative_and_zero_at_equality(diffs: list[float]) -> None:
    d = torch.tensor(diffs, dtype=torch.float64)
    ref = torch.zeros_like(d)
    for kind in ("abs", "k2", "k3"):
        # k3 = exp(-d) + d - 1 (veRL's formula) cancels near d = 0: -1.1e-16 at d = 4.8e-15.
        assert torch.all(kl_penalty(d, ref, kind) >= -1e-15)
        assert torch.all(kl_penalty(d, d, kind) == 0)


# --- entropy ---------------------------------------------------------------------------------


def test_entropy_from_logits_hand_computed() -> None:
    logits = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # uniform over 4: log 4
            [0.0, math.log(3), -1e4, -1e4],  # p = (1/4, 3/4)
            [100.0, 0.0, 0.0, 0.0],  # one-hot
            [-1e4, -1e4, -1e9, -1e9],  # very negative logits stay finite: log 2
        ]
    )
    h2 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    expected = torch.tensor([math.log(4), h2, 0.0, math.log(2)])
    torch.testing.assert_close(entropy_from_logits(logits), expected, atol=1e-5, rtol=1e-5)


def test_entropy_from_logits_filtered_vocabulary() -> None:
    logits = torch.tensor([[1.0, 1.0, -math.inf, -math.inf]], requires_grad=True)
    h = entropy_from_logits(logits)
    h.sum().backward()
    torch.testing.assert_close(h.detach(), torch.tensor([math.log(2)]))
    assert torch.all(torch.isfinite(logits.grad))


def test_entropy_regularization() -> None:
    h = torch.tensor([[1.0, 2.0, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert entropy_regularization(h, mask, coef=0.01).item() == pytest.approx(-0.015)


# --- truncated importance sampling -----------------------------------------------------------

TIS_OLD = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
# Token ratios old / behaviour: row 0 = 3, 0.5, 1, 2.5; row 1 = 1.5 then padding.
TIS_BEHAVIOUR = -torch.tensor(
    [[math.log(3), math.log(0.5), 0.0, math.log(2.5)], [math.log(1.5), 7.0, 7.0, 7.0]]
)
TIS_MASK = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])


def test_tis_token_truncate_hand_computed() -> None:
    w, d = tis_weights(TIS_OLD, TIS_BEHAVIOUR, TIS_MASK, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 1.0, 2.0], [1.5, 0.0, 0.0, 0.0]]))
    assert d["tis_mean"].item() == pytest.approx(7.0 / 5)
    assert d["tis_max"].item() == pytest.approx(2.0)
    assert d["tis_frac_truncated"].item() == pytest.approx(2 / 5)
    assert d["tis_ess"].item() == pytest.approx(7.0**2 / (5 * 11.5))


def test_tis_token_mask_hand_computed() -> None:
    w, d = tis_weights(TIS_OLD, TIS_BEHAVIOUR, TIS_MASK, cap=2.0, mode="mask")
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.5, 1.0, 0.0], [1.5, 0.0, 0.0, 0.0]]))
    assert d["tis_frac_truncated"].item() == pytest.approx(2 / 5)
    assert d["tis_ess"].item() == pytest.approx(3.0**2 / (5 * 3.5))


@pytest.mark.parametrize(("mode", "row0"), [("truncate", 2.0), ("mask", 0.0)])
def test_tis_sequence_hand_computed(mode: str, row0: float) -> None:
    # Row 0: 3 * 0.5 * 1 * 2.5 = 3.75 > cap; row 1: 1.5.
    w, d = tis_weights(TIS_OLD, TIS_BEHAVIOUR, TIS_MASK, cap=2.0, level="sequence", mode=mode)
    torch.testing.assert_close(w, torch.tensor([[row0] * 4, [1.5, 0.0, 0.0, 0.0]]))
    assert d["tis_mean"].item() == pytest.approx((row0 + 1.5) / 2)
    assert d["tis_frac_truncated"].item() == pytest.approx(0.5)
    assert d["tis_ess"].item() == pytest.approx((row0 + 1.5) ** 2 / (2 * (row0**2 + 2.25)))


def test_tis_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match=r"level must be one of .*sequence"):
        tis_weights(TIS_OLD, TIS_OLD, TIS_MASK, level="seq")
    with pytest.raises(ValueError, match=r"mode must be one of .*truncate"):
        tis_weights(TIS_OLD, TIS_OLD, TIS_MASK, mode="clip")
    with pytest.raises(ValueError, match="cap"):
        tis_weights(TIS_OLD, TIS_OLD, TIS_MASK, cap=0.0)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_tis_empty_responses(level: str) -> None:
    w, d = tis_weights(TIS_OLD, TIS_BEHAVIOUR, torch.zeros(2, 4), level=level)
    assert torch.all(w == 0)
    assert all(v.item() == 0.0 for v in d.values())


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    cap=st.floats(1.0, 5.0),
    level=st.sampled_from(["token", "sequence"]),
    mode=st.sampled_from(["truncate", "mask"]),
)
def test_tis_properties(seed: int, cap: float, level: str, mode: str) -> None:
    g = torch.Generator().manual_seed(seed)
    old = (-torch.rand(3, 6, generator=g) * 4).requires_grad_(True)
    behaviour = old.detach() + torch.randn(3, 6, generator=g)
    mask = torch.rand(3, 6, generator=g) < 0.7
    w, d = tis_weights(old, behaviour, mask, cap=cap, level=level, mode=mode)
    assert not w.requires_grad
    assert torch.all(w <= cap) and torch.all(w >= 0)
    assert torch.all(w[~mask] == 0)
    assert 0.0 <= d["tis_ess"].item() <= 1.0 + 1e-6
    # Padding values change nothing.
    junk = torch.randn(3, 6, generator=g) * 50
    w2, d2 = tis_weights(
        old, torch.where(mask, behaviour, junk), mask, cap=cap, level=level, mode=mode
    )
    torch.testing.assert_close(w2, w)
    for key, value in d.items():
        torch.testing.assert_close(d2[key], value)
    # On-policy: every weight is 1 on response tokens.
    w_on, d_on = tis_weights(old, old.detach(), mask, cap=cap, level=level, mode=mode)
    assert torch.all(w_on[mask] == 1)
    assert d_on["tis_frac_truncated"].item() == 0.0
    if mask.any():
        assert d_on["tis_ess"].item() == pytest.approx(1.0)


# --- forking tokens (top_entropy_quantile) ----------------------------------------------------


def test_top_entropy_mask_keeps_exactly_the_top_q_tokens():
    from calmrl.rl.losses import top_entropy_mask

    entropy = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.8, 0.2, 0.7, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])  # 7 tokens; the 0.0 is padding
    top = top_entropy_mask(entropy, mask, 0.3)  # ceil(0.3 * 7) = 3 tokens: 0.9, 0.8, 0.7
    assert top.tolist() == [[False, True, False, False], [True, False, True, False]]
    assert torch.equal(top_entropy_mask(entropy, mask, 1.0), mask.bool())
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        top_entropy_mask(entropy, mask, 0.0)


def test_the_forking_mask_passes_gradient_only_through_its_tokens():
    from calmrl.rl.losses import top_entropy_mask

    generator = torch.Generator().manual_seed(0)
    logprobs = torch.randn(3, 5, generator=generator).requires_grad_()
    old = logprobs.detach() + 0.05 * torch.randn(3, 5, generator=generator)
    advantages = torch.randn(3, 5, generator=generator)
    entropy = torch.rand(3, 5, generator=generator)
    mask = torch.ones(3, 5)
    forking = top_entropy_mask(entropy, mask, 0.2)
    assert int(forking.sum()) == 3
    loss, _ = policy_loss(logprobs, old, advantages, mask, tis_weights=forking.float())
    loss.backward()
    assert torch.all(logprobs.grad[~forking] == 0) and torch.all(logprobs.grad[forking] != 0)
    # q = 1 is the plain loss.
    full, _ = policy_loss(
        logprobs, old, advantages, mask, tis_weights=top_entropy_mask(entropy, mask, 1.0).float()
    )
    plain, _ = policy_loss(logprobs, old, advantages, mask)
    torch.testing.assert_close(full, plain)
