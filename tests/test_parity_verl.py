"""calmrl vs veRL's core_algos on random tensors, option by option (run with `make parity`).

Every comparison is its own (parametrised) test so that a mismatch names the option. veRL is
imported inside a fixture, not at module level, so that the default test run never pays for
importing it (it pulls in Ray).
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from calmrl.models.functional import entropy_from_logits
from calmrl.rl import advantages as adv
from calmrl.rl import losses
from calmrl.rl.importance import tis_weights
from calmrl.rl.reductions import aggregate

pytestmark = pytest.mark.parity

AGG_MODES = [
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
]
TOL = {"atol": 1e-6, "rtol": 1e-6}
B, T = 6, 11


@pytest.fixture(scope="session")
def verl() -> SimpleNamespace:
    try:
        verl_pkg = importlib.import_module("verl")
        core = importlib.import_module("verl.trainer.ppo.core_algos")
        functional = importlib.import_module("verl.utils.torch_functional")
        rollout_corr = importlib.import_module("verl.trainer.ppo.rollout_corr_helper")
        actor_cfg = importlib.import_module("verl.workers.config.actor")
    except ImportError as err:  # a parity run without veRL must not pass silently
        pytest.fail(f"veRL is not importable ({err}); run `make parity`")
    return SimpleNamespace(
        version=verl_pkg.__version__,
        core=core,
        F=functional,
        rollout_corr=rollout_corr,
        ActorConfig=actor_cfg.ActorConfig,
        PolicyLossConfig=actor_cfg.PolicyLossConfig,
    )


def test_verl_version_recorded(verl: SimpleNamespace) -> None:
    print(f"compared against verl {verl.version}")
    assert verl.version


def _actor_config(verl: SimpleNamespace, **kwargs: float) -> object:
    policy_keys = {"clip_cov_ratio", "clip_cov_lb", "clip_cov_ub", "kl_cov_ratio", "ppo_kl_coef"}
    policy = {k: v for k, v in kwargs.items() if k in policy_keys}
    actor = {k: v for k, v in kwargs.items() if k not in policy_keys}
    return verl.ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        policy_loss=verl.PolicyLossConfig(**policy),
        **actor,
    )


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random per-token tensors with ragged lengths, one empty row and junk on padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 7, 1, 0, 9, 4])
    mask = (torch.arange(T) < lengths[:, None]).float()
    logprobs = -torch.rand(B, T, generator=g) * 3
    return {
        "mask": mask,
        "logprobs": logprobs,
        "old_logprobs": logprobs + 0.4 * torch.randn(B, T, generator=g),
        "advantages": 2 * torch.randn(B, T, generator=g),
        "values": torch.randn(B, T, generator=g),
        "rewards": torch.randn(B, T, generator=g),
        "logits": 3 * torch.randn(B, T, 17, generator=g),
    }


# --- advantages ------------------------------------------------------------------------------

GROUPS = np.array([3, 3, 3, 7, 7, 7, 7, 1, 5, 5])  # sizes 3, 4, 1 (singleton), 2


def _outcome(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, length = len(GROUPS), 5
    mask = (torch.arange(length) < torch.randint(1, length + 1, (n,), generator=g)[:, None]).float()
    scores = torch.randint(0, 3, (n,), generator=g).float() + 0.1 * torch.randn(n, generator=g)
    # veRL takes token-level rewards and sums them; put the outcome on the last response token.
    token_rewards = torch.zeros(n, length)
    token_rewards[torch.arange(n), mask.sum(-1).long() - 1] = scores
    return scores, token_rewards, mask


@pytest.mark.parametrize("norm_by_std", [True, False], ids=["grpo", "dr_grpo"])
def test_grpo_advantages(verl: SimpleNamespace, norm_by_std: bool) -> None:
    scores, token_rewards, mask = _outcome(1)
    expected, _ = verl.core.compute_grpo_outcome_advantage(
        token_rewards, mask, GROUPS, norm_adv_by_std_in_grpo=norm_by_std
    )
    ours = adv.grpo_advantages(scores, torch.as_tensor(GROUPS), norm_by_std=norm_by_std)
    torch.testing.assert_close(adv.broadcast_to_tokens(ours, mask), expected, **TOL)


def test_rloo_advantages(verl: SimpleNamespace) -> None:
    scores, token_rewards, mask = _outcome(2)
    expected, _ = verl.core.compute_rloo_outcome_advantage(token_rewards, mask, GROUPS)
    ours = adv.rloo_advantages(scores, torch.as_tensor(GROUPS))
    torch.testing.assert_close(adv.broadcast_to_tokens(ours, mask), expected, **TOL)


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_advantages(verl: SimpleNamespace, gamma: float, lam: float) -> None:
    b = _batch(3)
    mask = b["mask"].clone()
    mask[0, 4:6] = 0  # tool/observation tokens inside a response are skipped, not ended on
    expected_adv, expected_ret = verl.core.compute_gae_advantage_return(
        b["rewards"], b["values"], mask, gamma, lam
    )
    ours_adv, ours_ret = adv.gae_advantages(b["rewards"], b["values"], mask, gamma=gamma, lam=lam)
    # veRL leaves carried-over numbers on masked positions; both sides are compared on tokens.
    valid = mask.bool()
    torch.testing.assert_close(ours_adv[valid], expected_adv[valid], **TOL)
    torch.testing.assert_close(ours_ret[valid], expected_ret[valid], **TOL)


# --- aggregation, KL, entropy ----------------------------------------------------------------


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate(verl: SimpleNamespace, mode: str) -> None:
    b = _batch(4)
    expected = verl.core.agg_loss(b["advantages"], b["mask"], mode)
    torch.testing.assert_close(aggregate(b["advantages"], b["mask"], mode), expected, **TOL)


@pytest.mark.parametrize(
    "kind",
    ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "k1+", "low_var_kl+", "k3+"],
)
def test_kl_penalty(verl: SimpleNamespace, kind: str) -> None:
    b = _batch(5)
    ref = b["old_logprobs"]
    theirs_in = b["logprobs"].clone().requires_grad_(True)
    ours_in = b["logprobs"].clone().requires_grad_(True)
    expected = verl.core.kl_penalty(theirs_in, ref, kind)
    ours = losses.kl_penalty(ours_in, ref, kind)
    torch.testing.assert_close(ours, expected, **TOL)
    expected.sum().backward()
    ours.sum().backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, **TOL)


# Entropy is compared in float64: in float32 veRL's unshifted logsumexp(h) - sum(p h) loses
# ~3e-6 to cancellation on these logits, while calmrl shifts by max(h) first and stays ~2e-7
# from the float64 value (checked below), so float32 outputs differ by more than 1e-6.


def test_entropy_from_logits(verl: SimpleNamespace) -> None:
    logits = _batch(6)["logits"].double()
    expected = verl.F.entropy_from_logits(logits)
    torch.testing.assert_close(entropy_from_logits(logits), expected, **TOL)
    ours_err = (entropy_from_logits(logits.float()) - expected).abs().max()
    verl_err = (verl.F.entropy_from_logits(logits.float()) - expected).abs().max()
    assert ours_err <= verl_err


@pytest.mark.parametrize("mode", AGG_MODES)
def test_entropy_loss(verl: SimpleNamespace, mode: str) -> None:
    b = _batch(7)
    b["logits"] = b["logits"].double()
    b["mask"] = b["mask"].double()
    expected = verl.core.compute_entropy_loss(b["logits"], b["mask"], mode)
    entropy = entropy_from_logits(b["logits"])
    ours = losses.entropy_regularization(entropy, b["mask"], coef=-1.0, agg=mode)
    torch.testing.assert_close(ours, expected, **TOL)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_value_loss(verl: SimpleNamespace, mode: str) -> None:
    b = _batch(8)
    vpreds = b["values"] + 0.8 * torch.randn(B, T, generator=torch.Generator().manual_seed(0))
    expected, expected_clipfrac = verl.core.compute_value_loss(
        vpreds, b["rewards"], b["values"], b["mask"], 0.5, mode
    )
    ours, metrics = losses.value_loss(
        vpreds, b["values"], b["rewards"], b["mask"], clip_range=0.5, agg=mode
    )
    torch.testing.assert_close(ours, expected, **TOL)
    torch.testing.assert_close(metrics["vf_clipfrac"], expected_clipfrac, **TOL)


# --- policy losses ---------------------------------------------------------------------------

CLIPS = {"symmetric": (0.2, 0.2), "clip_higher": (0.2, 0.28)}


def _with_grad(
    fn, b: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, object]]:
    logprobs = b["logprobs"].clone().requires_grad_(True)
    loss, metrics = fn(logprobs)
    loss.backward()
    return loss.detach(), logprobs.grad, metrics


def _assert_metric(ours: torch.Tensor, theirs: float) -> None:
    assert ours.item() == pytest.approx(theirs, abs=1e-6, rel=1e-6)


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("clip", list(CLIPS), ids=list(CLIPS))
@pytest.mark.parametrize("with_tis", [False, True], ids=["no_tis", "tis"])
def test_policy_loss_vanilla(verl: SimpleNamespace, mode: str, clip: str, with_tis: bool) -> None:
    b = _batch(9)
    low, high = CLIPS[clip]
    tis = 0.5 + torch.rand(B, T, generator=torch.Generator().manual_seed(1)) if with_tis else None
    config = _actor_config(verl, clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=3.0)
    expected, expected_grad, their_metrics = _with_grad(
        lambda lp: verl.core.compute_policy_loss_vanilla(
            b["old_logprobs"], lp, b["advantages"], b["mask"], mode, config, tis
        ),
        b,
    )
    ours, ours_grad, metrics = _with_grad(
        lambda lp: losses.policy_loss(
            lp,
            b["old_logprobs"],
            b["advantages"],
            b["mask"],
            clip_low=low,
            clip_high=high,
            clip_ratio_c=3.0,
            agg=mode,
            tis_weights=tis,
        ),
        b,
    )
    torch.testing.assert_close(ours, expected, **TOL)
    torch.testing.assert_close(ours_grad, expected_grad, **TOL)
    _assert_metric(metrics["clipfrac"], their_metrics["actor/pg_clipfrac"])
    _assert_metric(metrics["clipfrac_lower"], their_metrics["actor/pg_clipfrac_lower"])
    _assert_metric(metrics["approx_kl"], their_metrics["actor/ppo_kl"])


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("ratio", [2e-4, 0.1, 0.3])
def test_clip_cov_policy_loss(verl: SimpleNamespace, mode: str, ratio: float) -> None:
    b = _batch(10)
    config = _actor_config(
        verl, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_cov_ratio=ratio, clip_cov_lb=0.5
    )
    seed = 1234
    torch.manual_seed(seed)  # veRL draws from the global RNG
    expected, expected_grad, their_metrics = _with_grad(
        lambda lp: verl.core.compute_policy_loss_clip_cov(
            b["old_logprobs"], lp, b["advantages"], b["mask"], mode, config
        ),
        b,
    )
    ours, ours_grad, metrics = _with_grad(
        lambda lp: losses.clip_cov_policy_loss(
            lp,
            b["old_logprobs"],
            b["advantages"],
            b["mask"],
            clip_low=0.2,
            clip_high=0.28,
            clip_cov_ratio=ratio,
            clip_cov_lb=0.5,
            clip_cov_ub=5.0,
            agg=mode,
            generator=torch.Generator().manual_seed(seed),
        ),
        b,
    )
    assert metrics["clipfrac"] > 0, "the case must actually detach tokens"
    torch.testing.assert_close(ours, expected, **TOL)
    torch.testing.assert_close(ours_grad, expected_grad, **TOL)
    _assert_metric(metrics["clipfrac"], their_metrics["actor/pg_clipfrac"])
    _assert_metric(metrics["approx_kl"], their_metrics["actor/ppo_kl"])


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize(("ratio", "coef"), [(2e-4, 1.0), (0.1, 1.0), (0.3, 0.1)])
def test_kl_cov_policy_loss(verl: SimpleNamespace, mode: str, ratio: float, coef: float) -> None:
    b = _batch(11)
    config = _actor_config(verl, kl_cov_ratio=ratio, ppo_kl_coef=coef)
    expected, expected_grad, their_metrics = _with_grad(
        lambda lp: verl.core.compute_policy_loss_kl_cov(
            b["old_logprobs"], lp, b["advantages"], b["mask"], mode, config
        ),
        b,
    )
    ours, ours_grad, metrics = _with_grad(
        lambda lp: losses.kl_cov_policy_loss(
            lp,
            b["old_logprobs"],
            b["advantages"],
            b["mask"],
            kl_cov_ratio=ratio,
            ppo_kl_coef=coef,
            agg=mode,
        ),
        b,
    )
    torch.testing.assert_close(ours, expected, **TOL)
    torch.testing.assert_close(ours_grad, expected_grad, **TOL)
    _assert_metric(metrics["kl_abs"], their_metrics["actor/ppo_kl"])


# --- truncated importance sampling (veRL's rollout correction) --------------------------------


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["truncate", "mask"])
def test_tis_weights(verl: SimpleNamespace, level: str, mode: str) -> None:
    b = _batch(12)
    mask = b["mask"]
    # Small sequence-level gaps so that some sequence weights land on each side of the cap.
    scale = 1.0 if level == "token" else 0.3
    behaviour = b["old_logprobs"] + scale * torch.randn(
        B, T, generator=torch.Generator().manual_seed(5)
    )
    log_ratio = b["old_logprobs"] - behaviour
    # veRL's mask form is "lower_upper"; a lower bound below exp(-20) never binds.
    threshold = 2.0 if mode == "truncate" else "1e-12_2.0"
    expected, their_metrics = verl.rollout_corr.compute_rollout_correction_weights(
        log_ratio, mask, rollout_is=level, rollout_is_threshold=threshold
    )
    ours, diagnostics = tis_weights(
        b["old_logprobs"], behaviour, mask, cap=2.0, level=level, mode=mode
    )
    assert 0 < diagnostics["tis_frac_truncated"] < 1, "the case must exercise the cap"
    torch.testing.assert_close(ours, expected, **TOL)
    if level == "token":  # veRL's metrics count tokens; at sequence level ours count sequences
        _assert_metric(diagnostics["tis_mean"], their_metrics["rollout_is_mean"])
        _assert_metric(diagnostics["tis_max"], their_metrics["rollout_is_max"])
        _assert_metric(
            diagnostics["tis_frac_truncated"], their_metrics["rollout_is_ratio_fraction_high"]
        )
        _assert_metric(diagnostics["tis_ess"], their_metrics["rollout_is_eff_sample_size"])
