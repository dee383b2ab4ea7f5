"""What TRL's transformers path cannot do is refused in one line (no engine starts)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.trl


def test_tis_without_vllm_is_refused_in_one_line(tmp_path: Path) -> None:
    from trl_testing import grpo_config, require_trl

    require_trl()
    from calmrl.integrations.trl import NO_VLLM_TIS, configure_tis

    args = grpo_config(tmp_path, use_vllm=False)
    with pytest.raises(ValueError) as error:
        configure_tis(args, 2.0)
    assert str(error.value) == NO_VLLM_TIS
    assert "\n" not in str(error.value)


def test_trainer_refuses_tis_without_vllm_before_loading(tmp_path: Path) -> None:
    from trl_testing import grpo_config, parity_reward, prompts, require_trl

    require_trl()
    from calmrl.integrations.trl import NO_VLLM_TIS, CalmrlGRPOTrainer

    with pytest.raises(ValueError, match="^calmrl_tis: ") as error:
        CalmrlGRPOTrainer(
            model="unused-because-refused-first",
            reward_funcs=parity_reward,
            args=grpo_config(tmp_path, use_vllm=False),
            train_dataset=prompts(),
            calmrl_method=None,
            calmrl_tis=2.0,
        )
    assert str(error.value) == NO_VLLM_TIS


def test_ead_without_vllm_points_to_the_hf_processor(tmp_path: Path) -> None:
    from trl_testing import grpo_config, parity_reward, prompts, require_trl

    require_trl()
    from calmrl.integrations.trl import CalmrlGRPOTrainer

    with pytest.raises(ValueError, match="ScheduledTemperatureProcessor"):
        CalmrlGRPOTrainer(
            model="unused-because-refused-first",
            reward_funcs=parity_reward,
            args=grpo_config(tmp_path, use_vllm=False),
            train_dataset=prompts(),
        )
