"""Advantage estimators: hand-computed cases, edge cases and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calmrl.rewards.shaping import overlong_penalty
from calmrl.rl.advantages import (
    broadcast_to_tokens,
    dapo_group_filter,
    dr_grpo_advantages,
    entropy_shaped_advantages,
    gae_advantages,
    grpo_advantages,
    outcome_token_rewards,
    rloo_advantages,
)

# Three groups with non-contiguous prompt ids: {1, 0, 0}, {2, 2} (all equal), {5} (singleton).
REWARDS = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 5.0])
GROUPS = torch.tensor([10, 10, 10, 42, 42, 7])


def test_grpo_hand_computed() -> None:
    # Group {1, 0, 0}: mean 1/3, unbiased std sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3).
    std = math.sqrt(1 / 3)
    expected = torch.tensor([(2 / 3) / std, (-1 / 3) / std, (-1 / 3) / std, 0.0, 0.0, 5.0])
    torch.testing.assert_close(grpo_advantages(REWARDS, GROUPS), expected, atol=1e-5, rtol=1e-5)


def test_grpo_eps_is_added_to_std() -> None:
    out = grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), eps=1.0)
    # std of {1, 0} is sqrt(0.5); the deviation 0.5 is divided by sqrt(0.5) + 1.
    torch.testing.assert_close(out, torch.tensor([0.5, -0.5]) / (math.sqrt(0.5) + 1.0))


def test_dr_grpo_hand_computed() -> None:
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 5.0])
    torch.testing.assert_close(dr_grpo_advantages(REWARDS, GROUPS), expected)
    torch.testing.assert_close(grpo_advantages(REWARDS, GROUPS, norm_by_std=False), expected)


def test_rloo_hand_computed() -> None:
    # 1 - mean(0, 0) = 1; 0 - mean(1, 0) = -0.5; equal group 0; singleton keeps its reward.
    expected = torch.tensor([1.0, -0.5, -0.5, 0.0, 0.0, 5.0])
    torch.testing.assert_close(rloo_advantages(REWARDS, GROUPS), expected)


def test_group_estimators_do_not_depend_on_order_or_labels() -> None:
    perm = torch.tensor([5, 3, 0, 4, 2, 1])
    relabelled = GROUPS * 3 + 1
    for fn in (grpo_advantages, dr_grpo_advantages, rloo_advantages):
        base = fn(REWARDS, GROUPS)
        torch.testing.assert_close(fn(REWARDS[perm], relabelled[perm]), base[perm])


def test_group_estimators_empty_and_bad_shapes() -> None:
    empty = torch.zeros(0)
    assert grpo_advantages(empty, torch.zeros(0, dtype=torch.long)).shape == (0,)
    with pytest.raises(ValueError, match="group_index"):
        grpo_advantages(REWARDS, GROUPS[:-1])
    with pytest.raises(ValueError, match="rewards must be 1-D"):
        rloo_advantages(REWARDS.view(2, 3), GROUPS.view(2, 3))


def test_broadcast_to_tokens() -> None:
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), mask)
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        broadcast_to_tokens(torch.tensor([1.0]), mask)


# --- GAE -------------------------------------------------------------------------------------

R3 = torch.tensor([[0.0, 0.0, 1.0]])
V3 = torch.tensor([[0.5, 0.6, 0.7]])
M3 = torch.ones(1, 3)


def test_gae_undiscounted_is_return_minus_value() -> None:
    adv, ret = gae_advantages(R3, V3, M3, gamma=1.0, lam=1.0, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.4, 0.3]]))
    torch.testing.assert_close(ret, torch.ones(1, 3))


def test_gae_discounted_hand_computed() -> None:
    # delta = [0.5*0.6 - 0.5, 0.5*0.7 - 0.6, 1 - 0.7] = [-0.2, -0.25, 0.3]; gamma*lam = 0.25.
    adv, ret = gae_advantages(R3, V3, M3, gamma=0.5, lam=0.5, whiten=False)
    a1 = -0.25 + 0.25 * 0.3
    a0 = -0.2 + 0.25 * a1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.6, 1.0]]))


def test_gae_skips_masked_tokens_inside_a_response() -> None:
    # The middle token is an observation: its reward and value are ignored, not bootstrapped.
    rewards = torch.tensor([[0.0, 9.0, 1.0]])
    values = torch.tensor([[0.5, 99.0, 0.7]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.0, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 0.0, 1.0]]))


def test_gae_whiten_normalises_over_response_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    raw, _ = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8, whiten=False)
    white, _ = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    x = raw[mask]
    torch.testing.assert_close(white[mask], (x - x.mean()) / x.std(), atol=1e-5, rtol=1e-5)
    assert torch.all(white[~mask] == 0)


def test_outcome_reward_sits_on_the_last_response_token() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    out = outcome_token_rewards(torch.tensor([2.0, -1.0, 7.0, 0.5]), mask)
    expected = torch.tensor(
        [[0, 0, 2.0, 0], [0, 0, -1.0, 0], [0, 0, 0, 0], [0, 0, 0, 0.5]]
    )  # a masked gap does not end the response; an empty row gets nothing
    torch.testing.assert_close(out, expected)
    # With gamma = lam = 1 and V = 0, GAE returns the outcome reward at every response token.
    _, returns = gae_advantages(out, torch.zeros(4, 4), mask, gamma=1.0, lam=1.0, whiten=False)
    torch.testing.assert_close(returns, out.sum(-1, keepdim=True) * mask)
    with pytest.raises(ValueError, match=r"rewards \[B\] and mask \[B, T\]"):
        outcome_token_rewards(torch.zeros(3), mask)


def test_gae_whiten_needs_two_tokens() -> None:
    with pytest.raises(ValueError, match="at least 2 response tokens"):
        gae_advantages(R3, V3, torch.tensor([[0.0, 0.0, 1.0]]), gamma=1.0, lam=1.0)
    adv, ret = gae_advantages(R3, V3, torch.zeros(1, 3), gamma=1.0, lam=1.0, whiten=False)
    assert torch.all(adv == 0) and torch.all(ret == 0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), whiten=st.booleans())
def test_gae_padding_values_change_nothing(seed: int, whiten: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mask = torch.rand(4, 6, generator=g) < 0.6
    mask[0, :2] = True  # whitening needs two tokens
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.95, lam=0.9, whiten=whiten)
    junk = torch.full_like(rewards, float("nan"))
    adv2, ret2 = gae_advantages(
        torch.where(mask, rewards, junk),
        torch.where(mask, values, junk),
        mask,
        gamma=0.95,
        lam=0.9,
        whiten=whiten,
    )
    torch.testing.assert_close(adv2, adv)
    torch.testing.assert_close(ret2, ret)


# --- DAPO ------------------------------------------------------------------------------------


def test_dapo_group_filter_hand_computed() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    expected = torch.tensor([True, True, True, False, False, True, False, False])
    assert torch.equal(dapo_group_filter(rewards, groups), expected)


def test_overlong_penalty_hand_computed() -> None:
    lengths = torch.tensor([10, 16, 17, 18, 20, 25])
    out = overlong_penalty(lengths, max_response_length=20, buffer_length=4)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    half = overlong_penalty(lengths, max_response_length=20, buffer_length=4, penalty_factor=0.5)
    torch.testing.assert_close(half, out * 0.5)


@pytest.mark.parametrize("buffer_length", [0, 21])
def test_overlong_penalty_rejects_bad_buffer(buffer_length: int) -> None:
    with pytest.raises(ValueError, match="buffer_length"):
        overlong_penalty(torch.tensor([5]), max_response_length=20, buffer_length=buffer_length)


# --- entropy shaping -------------------------------------------------------------------------


def test_entropy_shaping_hand_computed() -> None:
    a = torch.tensor([[1.0, -1.0, 0.0, 2.0, 7.0]])
    h = torch.tensor([[0.5, 10.0, 3.0, 0.1, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    # bonus = min(0.4 H, |A| / 2) = [0.2, 0.5, 0, 0.04]; padding -> 0.
    expected = torch.tensor([[1.2, -0.5, 0.0, 2.04, 0.0]])
    torch.testing.assert_close(entropy_shaped_advantages(a, h, mask), expected)


def test_entropy_shaping_adds_no_entropy_gradient() -> None:
    a = torch.tensor([[1.0, -2.0]], requires_grad=True)
    h = torch.tensor([[0.5, 0.5]], requires_grad=True)
    entropy_shaped_advantages(a, h, torch.ones(1, 2)).sum().backward()
    assert h.grad is None
    assert a.grad is not None


def test_entropy_shaping_rejects_bad_parameters() -> None:
    a = torch.ones(1, 2)
    with pytest.raises(ValueError, match="kappa"):
        entropy_shaped_advantages(a, a, a, kappa=0.0)
    with pytest.raises(ValueError, match="alpha"):
        entropy_shaped_advantages(a, a, a, alpha=-1.0)


finite = st.floats(-10, 10, allow_nan=False, allow_subnormal=False)


@settings(max_examples=100, deadline=None)
@given(
    a=st.lists(finite, min_size=1, max_size=12),
    h=st.lists(st.floats(0, 10, allow_subnormal=False), min_size=12, max_size=12),
    alpha=st.floats(0, 2),
    kappa=st.floats(1.01, 10),
)
def test_entropy_shaping_properties(
    a: list[float], h: list[float], alpha: float, kappa: float
) -> None:
    adv = torch.tensor([a], dtype=torch.float64)
    ent = torch.tensor([h[: len(a)]], dtype=torch.float64)
    shaped = entropy_shaped_advantages(adv, ent, torch.ones_like(adv), alpha=alpha, kappa=kappa)
    bonus = shaped - adv
    tol = 1e-12
    assert torch.all(bonus >= -tol)
    assert torch.all(bonus <= adv.abs() / kappa + tol)
    assert torch.all(bonus <= alpha * ent + tol)
    assert torch.all(torch.sign(shaped) == torch.sign(adv))  # never flips, 0 stays 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_entropy_shaping_padding_values_change_nothing(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a, h = torch.randn(3, 5, generator=g), torch.rand(3, 5, generator=g)
    mask = torch.rand(3, 5, generator=g) < 0.5
    out = entropy_shaped_advantages(a, h, mask)
    junk = torch.full_like(a, float("nan"))
    out2 = entropy_shaped_advantages(torch.where(mask, a, junk), torch.where(mask, h, junk), mask)
    torch.testing.assert_close(out2, out)
    assert torch.all(out[~mask] == 0)
