"""The entropy-shaped actor loss inside veRL 0.9.1's ``ppo_loss`` (run with `make test-verl`).

The data is laid out as veRL's engine hands it to the loss: the model's outputs unpadded
(prompt and response tokens of each row back to back), the batch either dense or nested
(jagged rows). The loss and its gradient must equal calmrl.rl's PPO loss on the advantages
calmrl's ``entropy_shaped_advantages`` makes from the same entropies.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from calmrl.integrations.verl import PREFIX
from calmrl.rl import losses
from calmrl.rl.advantages import entropy_shaped_advantages

pytestmark = pytest.mark.verl

pytest.importorskip("verl", reason="veRL is not installed; run `make test-verl`")
actor_config = pytest.importorskip("verl.workers.config.actor")
tu = pytest.importorskip("verl.utils.tensordict_utils")
from omegaconf import OmegaConf  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from verl.workers.utils.losses import ppo_loss  # noqa: E402

from calmrl.integrations.verl import algos, trainer  # noqa: E402

TOL = {"atol": 1e-6, "rtol": 1e-6}
AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean"]
PROMPT_LENS = [3, 1, 4, 2, 2]
RESPONSE_LENS = [6, 2, 1, 5, 3]
B, P, R = len(PROMPT_LENS), max(PROMPT_LENS), max(RESPONSE_LENS)


def _tensors(seed: int) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(R) < torch.tensor(RESPONSE_LENS)[:, None]
    logprobs = -3 * torch.rand(B, R, generator=g)
    return SimpleNamespace(
        mask=mask,
        logprobs=logprobs,
        old=logprobs + 0.3 * torch.randn(B, R, generator=g),
        advantages=torch.randn(B, R, generator=g).where(torch.rand(B, R, generator=g) > 0.2, 0.0),
        entropy=2 * torch.rand(B, R, generator=g),
        tis=0.5 + torch.rand(B, R, generator=g),
    )


def _unpadded(per_token: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat ``(total_nnz,)`` model output whose response slots hold ``per_token`` (row i's token
    t is read at ``prompt_len - 1 + t`` of its segment, the left shift of causal LMs); junk
    elsewhere. Returns the values and the flat index of every response slot."""
    g = torch.Generator().manual_seed(seed)
    total = sum(PROMPT_LENS) + sum(RESPONSE_LENS)
    values = 10 * torch.randn(total, generator=g)
    slots = torch.zeros(B, R, dtype=torch.long)
    start = 0
    for i, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS, strict=True)):
        slots[i, :r] = start + p - 1 + torch.arange(r)
        start += p + r
    valid = torch.arange(R) < torch.tensor(RESPONSE_LENS)[:, None]
    values[slots[valid]] = per_token[valid]
    return values, slots


def _nested(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(
        [x[i, :n] for i, n in enumerate(lengths)], layout=torch.jagged
    )


def _data(t: SimpleNamespace, layout: str, tis: bool) -> TensorDict:
    prompts = torch.ones(B, P, dtype=torch.long)
    responses = torch.ones(B, R, dtype=torch.long)
    fields = {"response_mask": t.mask.float(), "old_log_probs": t.old, "advantages": t.advantages}
    if tis:
        fields["rollout_is_weights"] = t.tis
    if layout == "dense":
        attention = torch.cat(
            [torch.arange(P).flip(0) < torch.tensor(PROMPT_LENS)[:, None], t.mask], dim=1
        ).long()
        data = TensorDict(
            {"prompts": prompts, "responses": responses, "attention_mask": attention, **fields},
            batch_size=[B],
        )
    else:
        nested = {k: _nested(v, RESPONSE_LENS) for k, v in fields.items()}
        data = TensorDict(
            {
                "prompts": _nested(prompts, PROMPT_LENS),
                "responses": _nested(responses, RESPONSE_LENS),
                **nested,
            },
            batch_size=[B],
        )
        tu.assign_non_tensor_data(data, "max_response_len", R)
    # One data-parallel rank holding the whole batch: veRL's global normalisation is then
    # calmrl's micro-batch one.
    tu.assign_non_tensor_data(data, "dp_size", 1)
    tu.assign_non_tensor_data(data, "batch_num_tokens", int(t.mask.sum()))
    tu.assign_non_tensor_data(data, "global_batch_size", B)
    return data


def _config(loss_mode: str, mode: str) -> object:
    return actor_config.ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        loss_agg_mode=mode,
        calculate_entropy=True,
        policy_loss=actor_config.PolicyLossConfig(loss_mode=loss_mode),
    )


@pytest.mark.parametrize("layout", ["dense", "nested"])
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("loss_mode", ["vanilla", PREFIX + "vanilla"])
@pytest.mark.parametrize("tis", [False, True], ids=["no_tis", "tis"])
def test_entropy_shaped_loss_equals_calmrl(layout: str, mode: str, loss_mode: str, tis: bool):
    t = _tensors(1)
    alpha, kappa = 0.4, 2.0
    log_values, slots = _unpadded(t.logprobs, 2)
    entropy_values, _ = _unpadded(t.entropy, 3)
    log_values.requires_grad_(True)
    entropy_values.requires_grad_(True)  # shaping must not send gradient through H
    output = {"log_probs": log_values, "entropy": entropy_values}
    loss, metrics = algos.entropy_shaped_ppo_loss(
        _config(loss_mode, mode), output, _data(t, layout, tis), alpha=alpha, kappa=kappa
    )
    loss.backward()

    logprobs = t.logprobs.clone().requires_grad_(True)
    shaped = entropy_shaped_advantages(t.advantages, t.entropy, t.mask, alpha=alpha, kappa=kappa)
    expected, _ = losses.policy_loss(
        logprobs, t.old, shaped, t.mask, clip_low=0.2, clip_high=0.28, clip_ratio_c=3.0,
        agg=mode, tis_weights=t.tis if tis else None,
    )  # fmt: skip
    expected.backward()
    torch.testing.assert_close(loss, expected, **TOL)
    torch.testing.assert_close(log_values.grad[slots[t.mask]], logprobs.grad[t.mask], **TOL)
    assert entropy_values.grad is None or entropy_values.grad.abs().max() == 0
    bonus = (shaped - t.advantages)[t.mask].mean()
    assert metrics["actor/calmrl_entropy_bonus"] == pytest.approx(float(bonus), abs=1e-6)
    grad_diff = (log_values.grad[slots[t.mask]] - logprobs.grad[t.mask]).abs().max()
    print(f"{layout} {mode} {loss_mode} tis={tis}: |loss - calmrl| = {(loss - expected).abs():.3g}"
          f", |gradient - calmrl| = {grad_diff:.3g}")  # fmt: skip


def test_entropy_shaping_changes_the_loss_and_zero_alpha_is_ppo_loss():
    t = _tensors(4)
    log_values, _ = _unpadded(t.logprobs, 5)
    entropy_values, _ = _unpadded(t.entropy, 6)
    output = {"log_probs": log_values, "entropy": entropy_values}
    config = _config("vanilla", "token-mean")
    plain, _ = ppo_loss(config, output, _data(t, "dense", False))
    unshaped, _ = algos.entropy_shaped_ppo_loss(config, output, _data(t, "dense", False), alpha=0)
    shaped, _ = algos.entropy_shaped_ppo_loss(config, output, _data(t, "dense", False))
    torch.testing.assert_close(unshaped, plain, **TOL)
    assert (shaped - plain).abs() > 1e-3


def test_the_batch_the_caller_holds_is_not_changed():
    t = _tensors(7)
    data = _data(t, "nested", False)
    before = data["advantages"].values().clone()
    log_values, _ = _unpadded(t.logprobs, 8)
    entropy_values, _ = _unpadded(t.entropy, 9)
    output = {"log_probs": log_values, "entropy": entropy_values}
    algos.entropy_shaped_ppo_loss(_config("vanilla", "token-mean"), output, data)
    torch.testing.assert_close(data["advantages"].values(), before)


def test_missing_entropy_is_one_line():
    t = _tensors(10)
    log_values, _ = _unpadded(t.logprobs, 11)
    with pytest.raises(ValueError, match=r"set actor_rollout_ref\.actor\.calculate_entropy=true"):
        algos.entropy_shaped_ppo_loss(
            _config("vanilla", "token-mean"), {"log_probs": log_values}, _data(t, "dense", False)
        )


# --- the trainer modes that install it -------------------------------------------------------


def _full_config(**actor: object) -> object:
    return OmegaConf.create(
        {
            "actor_rollout_ref": {
                "actor": {
                    "_target_": "verl.workers.config.ActorConfig",
                    "strategy": "fsdp",
                    "rollout_n": 1,
                    "ppo_micro_batch_size_per_gpu": 1,
                    "calculate_entropy": True,
                    **actor,
                }
            },
            "calmrl": {"entropy_shaping": {"alpha": 0.1, "kappa": 3.0}},
        }
    )


def test_calmrl_trainer_installs_the_shaped_loss_after_init():
    from verl.trainer.ppo.v1 import get_trainer_cls

    calls: list[object] = []
    cls = get_trainer_cls(PREFIX + "sync")
    assert cls.__mro__[1] is get_trainer_cls("sync")
    self = object.__new__(cls)  # the workers are Ray actors; stand-ins record the calls
    self.config = _full_config(clip_ratio_high=0.28)
    self.global_steps = 0
    self.checkpoint_manager = SimpleNamespace(update_weights=lambda step: calls.append(step))
    self.actor_rollout_wg = SimpleNamespace(set_loss_fn=calls.append)
    self.on_init_end()
    step, loss_fn = calls  # the base trainer's own on_init_end ran first
    assert step == 0
    assert loss_fn.func is algos.entropy_shaped_ppo_loss
    assert loss_fn.keywords["alpha"] == 0.1 and loss_fn.keywords["kappa"] == 3.0
    assert isinstance(loss_fn.keywords["config"], actor_config.ActorConfig)
    assert loss_fn.keywords["config"].clip_ratio_high == 0.28


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_full_config(calculate_entropy=False), "calculate_entropy: must be true"),
        (
            OmegaConf.merge(_full_config(), {"calmrl": {"entropy_shaping": {"kappa": 0}}}),
            r"calmrl\.entropy_shaping\.kappa: must be > 0",
        ),
        (
            OmegaConf.merge(_full_config(), {"distillation": {"enabled": True}}),
            "distillation.enabled",
        ),
    ],
    ids=["no_entropy", "bad_kappa", "distillation"],
)
def test_trainer_refuses_what_it_cannot_do(config: object, message: str):
    with pytest.raises(ValueError, match=message):
        trainer.entropy_shaping_loss_fn(config)
