"""examples/verl/: the paper's recipe as a veRL 0.9.1 config (run with `make test-verl`).

It is composed with veRL's own Hydra defaults, as ``python -m verl.trainer.main_ppo
--config-path ... --config-name ...`` composes it, veRL's config dataclasses are built from it,
and its knobs are compared with calmrl's own recipe (configs/), one mapping at a time. A run
needs GPUs; this checks everything up to that point.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from calmrl.integrations.verl import PREFIX
from calmrl.integrations.verl.settings import read_settings
from calmrl.sampling.methods import Method

pytestmark = pytest.mark.verl

pytest.importorskip("verl", reason="veRL is not installed; run `make test-verl`")
hydra = pytest.importorskip("hydra")
from verl.trainer.config import RolloutCorrectionConfig  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "verl"
NAME = "qwen2.5-math-1.5b-dapo-ead-tis"


def _compose(*overrides: str) -> object:
    with hydra.initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        return hydra.compose(config_name=NAME, overrides=list(overrides))


@pytest.fixture(scope="module")
def cfg() -> object:
    return _compose()


@pytest.fixture(scope="module")
def calmrl_recipe() -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{NAME}.yaml").read_text())


def test_verl_builds_its_configs_from_it(cfg: object) -> None:
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    algorithm = omega_conf_to_dataclass(cfg.algorithm)
    assert actor.policy_loss.loss_mode in core_algos.POLICY_LOSS_REGISTRY
    assert algorithm.adv_estimator in core_algos.ADV_ESTIMATOR_REGISTRY
    # veRL reads this section as a mapping; its dataclass checks the key names and values.
    correction = omega_conf_to_dataclass(algorithm.rollout_correction, RolloutCorrectionConfig)
    assert (correction.rollout_is, correction.rollout_is_threshold) == ("token", 2.0)
    assert not correction.bypass_mode
    assert rollout.agent.default_agent_loop == PREFIX + "ead"
    validate_config(cfg, use_reference_policy=False, use_critic=False)


def test_the_named_loop_and_trainer_are_registered(cfg: object) -> None:
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.trainer.ppo.v1 import get_trainer_cls

    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop in _agent_loop_registry
    get_trainer_cls(cfg.trainer.v1.trainer_mode)
    get_trainer_cls(PREFIX + cfg.trainer.v1.trainer_mode)


def test_it_is_calmrls_recipe(cfg: object, calmrl_recipe: dict) -> None:
    """Each veRL knob against calmrl's: docs/algorithms.md's mapping table, applied."""
    ours, rollout, algo = calmrl_recipe, calmrl_recipe["rollout"], calmrl_recipe["algorithm"]
    actor, verl_rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert read_settings(cfg).method == Method(rollout["method"], rollout["params"])
    assert cfg.actor_rollout_ref.model.path == ours["model"]["name"]
    assert verl_rollout.n == rollout["n"]
    assert cfg.data.train_batch_size == rollout["prompts_per_step"]
    assert cfg.data.max_response_length == rollout["max_new_tokens"]
    assert actor.ppo_mini_batch_size * verl_rollout.n == algo["minibatch_size"]
    assert actor.ppo_micro_batch_size_per_gpu == algo["micro_batch_size"]
    assert cfg.algorithm.adv_estimator == PREFIX + algo["advantage"]
    assert cfg.algorithm.filter_groups.enable == algo["dynamic_sampling"]
    assert cfg.reward.reward_kwargs.overlong_buffer_cfg.len == algo["overlong_buffer"]
    assert cfg.reward.reward_kwargs.max_resp_len == rollout["max_new_tokens"]
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (algo["clip_low"], algo["clip_high"])
    assert actor.loss_agg_mode == algo["agg"]
    assert algo["tis"] and cfg.algorithm.rollout_correction.rollout_is == "token"
    assert cfg.algorithm.rollout_correction.rollout_is_threshold == algo["tis_cap"]
    assert actor.optim.lr == ours["optim"]["lr"]
    assert actor.optim.lr_warmup_steps == ours["optim"]["warmup_steps"]
    assert cfg.trainer.total_training_steps == ours["train"]["steps"]
    assert verl_rollout.val_kwargs.n == ours["train"]["eval_n"]
    assert verl_rollout.val_kwargs.temperature == ours["train"]["eval_params"]["tau"]
    assert verl_rollout.temperature == 1.0 and verl_rollout.calculate_log_probs


def test_entropy_shaping_trainer_builds_its_loss_from_the_composed_config() -> None:
    from calmrl.integrations.verl import algos, trainer

    cfg = _compose(
        "trainer.v1.trainer_mode=calmrl_sync", "actor_rollout_ref.actor.calculate_entropy=true"
    )
    loss_fn = trainer.entropy_shaping_loss_fn(cfg)
    assert loss_fn.func is algos.entropy_shaped_ppo_loss
    assert loss_fn.keywords["config"].policy_loss.loss_mode == PREFIX + "vanilla"
