"""EAD + TIS + entropy shaping in a 3-step TRL GRPO run (one vLLM engine for the module)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.trl

CAP = 2.0


@pytest.fixture(scope="module")
def ead_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from trl_testing import require_trl, run, stop
    from vllm_testing import tiny_dir

    require_trl()
    import calmrl.integrations.vllm.runners as runners
    from calmrl.integrations.trl import CalmrlGRPOTrainer

    _, _, path = tiny_dir(tmp_path_factory.mktemp("tiny"))
    seen: list[int] = []
    shaped: list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] = []
    check = runners.check_request
    shape = CalmrlGRPOTrainer.shape_advantages
    score = CalmrlGRPOTrainer._generate_and_score_completions
    batches: list[dict[str, torch.Tensor]] = []

    def spy_score(self: Any, inputs: Any) -> dict[str, Any]:
        out = score(self, inputs)
        keys = ("old_per_token_logps", "sampling_per_token_logps", "importance_sampling_ratio")
        batches.append({k: out[k].detach().clone() for k in (*keys, "completion_mask")})
        return out

    def spy_check(extra_args: Any, **kwargs: Any) -> Any:
        if extra_args and "calmrl" in extra_args:
            seen.append(extra_args["calmrl"]["step"])
        return check(extra_args, **kwargs)

    def spy_shape(self: Any, inputs: dict[str, Any], entropies: torch.Tensor) -> torch.Tensor:
        out = shape(self, inputs, entropies)
        keep = {k: inputs[k].detach().clone() for k in ("advantages", "completion_mask")}
        shaped.append((keep, entropies.detach().clone(), out.detach().clone()))
        return out

    runners.check_request = spy_check
    CalmrlGRPOTrainer.shape_advantages = spy_shape  # type: ignore[method-assign]
    CalmrlGRPOTrainer._generate_and_score_completions = spy_score  # type: ignore[method-assign]
    try:
        trainer = run(
            path,
            tmp_path_factory.mktemp("out"),
            # A small step: at 1e-3 the random model turns near-deterministic after one update,
            # and then no temperature changes what it samples.
            config={"learning_rate": 1e-5},
            # The paper's schedule: past the 10 warm-up tokens tau falls to 0.1 by token ~20, so
            # vLLM samples far sharper than pi_old (tau = 1) and the ratio's tail hits the cap.
            calmrl_method="ead-paper",
            calmrl_tis=CAP,
            entropy_shaping=(0.4, 2.0),
        )
    finally:
        runners.check_request = check
        CalmrlGRPOTrainer.shape_advantages = shape  # type: ignore[method-assign]
        CalmrlGRPOTrainer._generate_and_score_completions = score  # type: ignore[method-assign]
    yield {"trainer": trainer, "seen": seen, "shaped": shaped, "batches": batches}
    stop(trainer)


def test_tis_ratio_hits_the_cap_and_its_mean_is_well_below_one(ead_run: dict[str, Any]) -> None:
    from trl_testing import metric

    trainer = ead_run["trainer"]
    maxima = metric(trainer, "sampling/importance_sampling_ratio/max")
    means = metric(trainer, "sampling/importance_sampling_ratio/mean")
    print(f"EAD: IS ratio max {maxima}, mean {means}")
    assert len(maxima) == 3
    assert all(m == pytest.approx(CAP) for m in maxima)
    assert all(m < 0.8 for m in means)
    assert trainer.args.vllm_importance_sampling_mode == "token_truncate"


def test_trls_correction_equals_calmrls_token_tis(ead_run: dict[str, Any]) -> None:
    from calmrl.rl.importance import tis_weights

    assert len(ead_run["batches"]) == 3
    for batch in ead_run["batches"]:
        mask = batch["completion_mask"]
        weights, _ = tis_weights(
            batch["old_per_token_logps"], batch["sampling_per_token_logps"], mask, cap=CAP
        )
        trl_weights = batch["importance_sampling_ratio"] * mask
        torch.testing.assert_close(weights, trl_weights, atol=1e-6, rtol=1e-6)
    trainer = ead_run["trainer"]
    from trl_testing import metric

    print(
        "EAD: calmrl tis_frac_truncated",
        metric(trainer, "calmrl/tis_frac_truncated"),
        "tis_ess",
        metric(trainer, "calmrl/tis_ess"),
    )
    assert all(0 < f < 1 for f in metric(trainer, "calmrl/tis_frac_truncated"))
    assert all(0 < e <= 1 for e in metric(trainer, "calmrl/tis_ess"))


def test_the_step_reaches_the_processor(ead_run: dict[str, Any]) -> None:
    trainer = ead_run["trainer"]
    assert trainer.calmrl_steps == [0, 1, 2]
    assert sorted(set(ead_run["seen"])) == [0, 1, 2]


def test_entropy_shaped_advantages_equal_calmrl_rl(ead_run: dict[str, Any]) -> None:
    from calmrl.rl.advantages import entropy_shaped_advantages

    shaped = ead_run["shaped"]
    assert len(shaped) == 3  # once per loss, inside the loss's own forward
    for inputs, entropies, out in shaped:
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1).expand_as(entropies)
        expected = entropy_shaped_advantages(
            advantages, entropies, inputs["completion_mask"], alpha=0.4, kappa=2.0
        )
        assert torch.equal(out, expected)
        assert out.shape == entropies.shape


def test_schedule_is_logged(ead_run: dict[str, Any]) -> None:
    from trl_testing import metric

    trainer = ead_run["trainer"]
    assert metric(trainer, "calmrl/tau@0") == pytest.approx([1.0] * 3)  # warm-up
    assert metric(trainer, "calmrl/tau@64") == pytest.approx([0.1] * 3)  # the floor
    assert len(metric(trainer, "calmrl/entropy_bonus")) == 3
    assert len(metric(trainer, "calmrl/entropy_by_position/16-31")) == 3
