"""calmrl's veRL plug-in inside veRL 0.9.1 on the CPU (run with `make test-verl`).

- `import verl` loads the `verl.plugins` entry point and registers every `calmrl_*` name
  (asserted in a fresh interpreter: veRL swallows plug-in import errors);
- each registered estimator and policy loss equals calmrl's own function and, where veRL has
  the same algorithm, veRL's built-in, on random tensors (<= 1e-6), with and without veRL's
  global-batch normalisation;
- the entropy-shaped actor loss equals calmrl.rl on the same tensors, dense and nested layouts;
- the `calmrl_ead` agent loop sends EAD's extra_args with the step to the server.

Full veRL training (Ray, FSDP workers, a GPU rollout server) does not run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from calmrl.integrations.verl import PREFIX
from calmrl.rl import advantages as adv
from calmrl.rl import losses

pytestmark = pytest.mark.verl

verl = pytest.importorskip("verl", reason="veRL is not installed; run `make test-verl`")
core = pytest.importorskip("verl.trainer.ppo.core_algos")
actor_config = pytest.importorskip("verl.workers.config.actor")

from calmrl.integrations.verl import algos  # noqa: E402  (needs veRL importable)

AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
             "seq-mean-token-sum-norm"]  # fmt: skip
TOL = {"atol": 1e-6, "rtol": 1e-6}
B, T = 6, 11
GROUPS = np.array(["p3", "p3", "p3", "p7", "p7", "p7", "p7", "p1", "p5", "p5"], dtype=object)
DIFFS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the largest |calmrl - veRL| per comparison once the module is done."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if DIFFS and capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"\nveRL {verl.__version__}: max |calmrl plug-in - reference| per comparison")
            for name, value in sorted(DIFFS.items()):
                print(f"  {name:<48} {value:.3g}")


def close(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs.to(ours.dtype), **TOL)
    diff = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    DIFFS[name] = max(DIFFS.get(name, 0.0), diff)


# --- registration ----------------------------------------------------------------------------

PROBE = """
import json, verl
from verl.trainer.ppo import core_algos
import verl.experimental.agent_loop.agent_loop as agent_loop
from verl.trainer.ppo.v1 import trainer_base
print(json.dumps({
    "estimators": sorted(n for n in core_algos.ADV_ESTIMATOR_REGISTRY if n.startswith("calmrl_")),
    "losses": sorted(n for n in core_algos.POLICY_LOSS_REGISTRY if n.startswith("calmrl_")),
    "agent_loops": sorted(n for n in agent_loop._agent_loop_registry if n.startswith("calmrl_")),
    "trainers": sorted(n for n in trainer_base.TRAINER_REGISTRY if n.startswith("calmrl_")),
}))
"""


def _probe(policy: str | None) -> dict[str, list[str]]:
    env = dict(os.environ)
    env.pop("VERL_USE_EXTERNAL_PLUGINS", None)
    if policy is not None:
        env["VERL_USE_EXTERNAL_PLUGINS"] = policy
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "calmrl: registering" not in done.stderr, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


EXPECTED = {
    "estimators": sorted(PREFIX + n for n in ["grpo", "dr_grpo", "rloo"]),
    "losses": sorted(PREFIX + n for n in ["vanilla", "clip_cov", "kl_cov"]),
    "agent_loops": [PREFIX + "ead"],
    "trainers": sorted(PREFIX + n for n in ["sync", "colocate_async", "separate_async"]),
}


def test_entry_point_is_installed() -> None:
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert found.get("calmrl") == "calmrl.integrations.verl.plugin"


@pytest.mark.parametrize("policy", [None, "auto", "calmrl"], ids=["default", "auto", "by_name"])
def test_import_verl_registers_every_calmrl_name(policy: str | None) -> None:
    assert _probe(policy) == EXPECTED
    # Every calmrl estimator that needs no value head and every policy loss is offered.
    assert EXPECTED["estimators"] == sorted(PREFIX + n for n in algos.estimator_names())
    assert EXPECTED["losses"] == sorted(PREFIX + n for n in algos.policy_loss_names())


def test_plugins_off_registers_nothing() -> None:
    assert _probe("none") == {k: [] for k in EXPECTED}


# --- advantage estimators --------------------------------------------------------------------


def _outcome(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, length = len(GROUPS), 5
    mask = (torch.arange(length) < torch.randint(1, length + 1, (n,), generator=g)[:, None]).float()
    scores = torch.randint(0, 3, (n,), generator=g).float() + 0.1 * torch.randn(n, generator=g)
    token_rewards = torch.zeros(n, length)
    token_rewards[torch.arange(n), mask.sum(-1).long() - 1] = scores
    return scores, token_rewards, mask


VERL_ESTIMATORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "grpo": lambda r, m, i: core.compute_grpo_outcome_advantage(r, m, i),
    "dr_grpo": lambda r, m, i: core.compute_grpo_outcome_advantage(
        r, m, i, norm_adv_by_std_in_grpo=False
    ),
    "rloo": lambda r, m, i: core.compute_rloo_outcome_advantage(r, m, i),
}


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_estimator_equals_calmrl_and_verl(name: str, seed: int) -> None:
    scores, token_rewards, mask = _outcome(seed)
    registered = core.get_adv_estimator_fn(PREFIX + name)
    config = {"norm_adv_by_std_in_grpo": True}
    ours, returns = registered(
        token_level_rewards=token_rewards, response_mask=mask, config=config, index=GROUPS
    )
    groups = algos.group_ids(GROUPS)
    calmrl, _ = adv.ADVANTAGES.call(name, scores, mask, groups, options={})
    close(f"estimator {name} vs calmrl", ours, calmrl)
    theirs, _ = VERL_ESTIMATORS[name](token_rewards, mask, GROUPS)
    close(f"estimator {name} vs veRL", ours, theirs)
    torch.testing.assert_close(returns, ours)


def test_calmrl_grpo_honours_norm_adv_by_std_in_grpo() -> None:
    _, token_rewards, mask = _outcome(4)
    registered = core.get_adv_estimator_fn(PREFIX + "grpo")
    ours, _ = registered(token_rewards, mask, {"norm_adv_by_std_in_grpo": False}, GROUPS)
    theirs, _ = VERL_ESTIMATORS["dr_grpo"](token_rewards, mask, GROUPS)
    close("estimator grpo(no std) vs veRL", ours, theirs)


def test_estimator_without_index_fails_with_one_line() -> None:
    _, token_rewards, mask = _outcome(5)
    with pytest.raises(ValueError, match="calmrl_rloo: needs veRL's uid index"):
        core.get_adv_estimator_fn(PREFIX + "rloo")(token_rewards, mask, None)


# --- policy losses ---------------------------------------------------------------------------


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 7, 1, 0, 9, 4])
    logprobs = -torch.rand(B, T, generator=g) * 3
    return {
        "mask": (torch.arange(T) < lengths[:, None]).float(),
        "logprobs": logprobs,
        "old": logprobs + 0.4 * torch.randn(B, T, generator=g),
        "advantages": 2 * torch.randn(B, T, generator=g),
        "tis": 0.5 + torch.rand(B, T, generator=g),
    }


def _config(**global_info: int) -> object:
    config = actor_config.ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        policy_loss=actor_config.PolicyLossConfig(
            clip_cov_ratio=0.3, clip_cov_lb=0.5, kl_cov_ratio=0.1, ppo_kl_coef=1.0
        ),
    )
    config.global_batch_info.update(global_info)
    return config


def _run(fn: Callable[..., tuple[torch.Tensor, dict]], b: dict[str, torch.Tensor], *args: object):
    logprobs = b["logprobs"].clone().requires_grad_(True)
    torch.manual_seed(1234)  # clip_cov draws its tokens from the global RNG, as veRL
    loss, metrics = fn(b["old"], logprobs, b["advantages"], b["mask"], *args)
    loss.backward()
    return loss.detach(), logprobs.grad, metrics


LOSSES = {"vanilla": "vanilla", "clip_cov": "clip_cov", "kl_cov": "kl_cov"}
GLOBAL = {"local": {}, "global": {"dp_size": 2, "batch_num_tokens": 77, "global_batch_size": 9}}


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("tis", [False, True], ids=["no_tis", "tis"])
@pytest.mark.parametrize("scope", list(GLOBAL))
def test_policy_loss_equals_verl(name: str, mode: str, tis: bool, scope: str) -> None:
    b = _batch(9)
    weights = b["tis"] if tis else None
    config = _config(**GLOBAL[scope])
    ours, ours_grad, metrics = _run(
        core.get_policy_loss_fn(PREFIX + name), b, mode, config, weights
    )
    theirs, their_grad, their_metrics = _run(
        core.get_policy_loss_fn(name), b, mode, config, weights
    )
    close(f"loss {name} vs veRL ({scope})", ours, theirs)
    close(f"loss {name} gradient vs veRL ({scope})", ours_grad, their_grad)
    for key, value in their_metrics.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("mode", AGG_MODES)
def test_policy_loss_equals_calmrl(name: str, mode: str) -> None:
    b = _batch(10)
    config = _config()
    ours, ours_grad, _ = _run(core.get_policy_loss_fn(PREFIX + name), b, mode, config, b["tis"])

    def calmrl(old, logprobs, advantages, mask):
        options = {**algos.loss_options(config), "loss_scale_factor": None}
        return losses.POLICY_LOSSES.call(
            name, logprobs, old, advantages, mask, options=options, agg=mode, tis_weights=b["tis"]
        )

    theirs, their_grad, _ = _run(calmrl, b)
    close(f"loss {name} vs calmrl", ours, theirs)
    close(f"loss {name} gradient vs calmrl", ours_grad, their_grad)


def test_global_scale_needs_the_counts_on_several_ranks() -> None:
    with pytest.raises(ValueError, match="batch_num_tokens is required when dp_size > 1"):
        algos.global_scale(torch.ones(2, 3), "token-mean", {"dp_size": 2})
