"""Entropy shaping on TRL's transformers path (no engine): with num_iterations=2 the second
update reuses the batch, and the entropies the shaping uses are the updated policy's."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.trl


def _entropy_now(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    width = inputs["completion_ids"].shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -width - 1 : -1].float()
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def test_shaping_uses_the_current_policys_entropy(tmp_path: Path) -> None:
    from trl_testing import grpo_config, parity_reward, prompts, require_trl

    require_trl()
    from calmrl.integrations.trl import CalmrlGRPOTrainer
    from calmrl.models import tiny_model

    model, tokenizer = tiny_model(seed=3)
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    class Spy(CalmrlGRPOTrainer):
        def shape_advantages(self, inputs: dict[str, Any], entropies: torch.Tensor) -> Any:
            mask = inputs["completion_mask"].bool()
            now = _entropy_now(self.model, inputs)
            calls.append((entropies.detach()[mask], now[mask], inputs["completion_ids"].clone()))
            return super().shape_advantages(inputs, entropies)

    args = grpo_config(
        tmp_path,
        use_vllm=False,
        num_iterations=2,
        max_steps=2,
        learning_rate=1e-2,
        max_completion_length=8,
    )
    trainer = Spy(
        model=model,
        processing_class=tokenizer,
        reward_funcs=parity_reward,
        args=args,
        train_dataset=prompts(),
        calmrl_method=None,
        entropy_shaping=(0.4, 2.0),
    )
    trainer.train()
    assert len(calls) == 2
    for used, now, _ in calls:
        torch.testing.assert_close(used, now, atol=1e-5, rtol=1e-5)
    # The second update saw the same rollouts through an updated policy.
    assert torch.equal(calls[0][2], calls[1][2])
    assert (calls[0][0] - calls[1][0]).abs().max() > 1e-4


def test_example_reward_and_imports() -> None:
    from trl_testing import require_trl

    require_trl()
    path = Path(__file__).resolve().parents[2] / "examples" / "trl_grpo_ead.py"
    spec = importlib.util.spec_from_file_location("trl_grpo_ead", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.correctness([r"so \boxed{4}", r"\boxed{5}"], answer=["4", "4"]) == [1.0, 0.0]
