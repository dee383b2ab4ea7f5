"""``calmrl train rollout.backend=vllm``: three steps through the CLI, then a resume, with TIS
weights from vLLM's behaviour log-probs and evaluation through the same engine."""

from __future__ import annotations

import json
import sys

import pytest
from vllm_testing import record, require_vllm, tiny_dir

pytestmark = pytest.mark.vllm


def _run(monkeypatch, argv):
    from calmrl import cli

    monkeypatch.setattr(sys, "argv", ["calmrl", "train", *argv])
    try:
        cli.main()
    except SystemExit as stop:
        assert stop.code in (0, None), f"calmrl train exited {stop.code}"


def test_train_three_steps_with_vllm_rollouts_and_resume(tmp_path, monkeypatch):
    require_vllm()
    _, _, model_dir = tiny_dir(tmp_path / "tiny", seed=3)
    run = tmp_path / "run"
    overrides = [
        f"model.name={model_dir}",
        f"train.output_dir={run}",
        "rollout.backend=vllm",
        "rollout.vllm.max_model_len=512",
        f"rollout.vllm.kv_cache_memory_bytes={1 << 28}",
        "rollout.method=ead-paper",
        "rollout.params={d0: 3.0}",
        "rollout.n=4",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=16",
        "rollout.top_p=0.95",
        "data.train=arith-add-1",
        "data.eval=arith-add-1",
        "data.eval_limit=2",
        "data.few_shot=null",
        "reward.name=vllm_testing:half_rewarded",
        "algorithm.dynamic_sampling=false",
        "optim.lr=1e-3",
        "train.steps=3",
        "train.save_every=1",
        "train.eval_every=3",
        "train.eval_n=2",
        "train.eval_k=[1, 2]",
        "train.tensorboard=false",
    ]
    _run(monkeypatch, overrides)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    steps = [m["step"] for m in metrics if "step" in m and "rollout/tokens" in m]
    assert steps == [1, 2, 3]
    trained = [m for m in metrics if "tis/mean" in m]
    # vLLM's behaviour log-probs reach TIS (top_p 0.95 and tau != 1 make them differ from
    # pi_old), the schedule passes its warm-up, and the updates move the weights.
    assert all(0 < m["tis/mean"] < 2.0 for m in trained)
    assert any(m["rollout/temperature_min"] < 1.0 for m in trained)
    assert any(m["grad_norm"] > 0 for m in trained)
    record(
        "train rollout.backend=vllm: tis/mean per step", [round(m["tis/mean"], 3) for m in trained]
    )
    assert (run / "final").is_dir()

    _run(monkeypatch, ["--resume", str(run), "train.steps=4"])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    steps = [m["step"] for m in metrics if "step" in m and "rollout/tokens" in m]
    assert steps == [1, 2, 3, 4]
    record("train rollout.backend=vllm: steps after resume", steps)


def test_the_trainers_engine_samples_the_updated_weights(tmp_path):
    """After the trainer's optimizer steps (each followed by a sync), vLLM's raw log-probs
    equal the trainer model's own."""
    require_vllm()
    import torch

    from calmrl.config import load_config
    from calmrl.models import tiny_model
    from calmrl.rl.forward import response_logprobs
    from calmrl.rl.trainer import Trainer
    from calmrl.sampling import Method

    cfg = load_config(overrides=[
        f"train.output_dir={tmp_path / 'run'}", "rollout.backend=vllm",
        "rollout.vllm.max_model_len=512", f"rollout.vllm.kv_cache_memory_bytes={1 << 28}",
        "rollout.n=4", "rollout.prompts_per_step=2", "rollout.max_new_tokens=12",
        "data.train=arith-add-1", "data.eval=null", "data.few_shot=null",
        "reward.name=vllm_testing:half_rewarded", "optim.lr=3e-3", "train.steps=2",
        "train.eval_every=0", "train.tensorboard=false",
    ])  # fmt: skip
    model, tokenizer = tiny_model(hidden_size=128, head_dim=64, seed=5)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    trainer.train()
    moved = max(float((v - initial[k]).abs().max()) for k, v in model.state_dict().items())
    assert moved > 0
    rollouts = trainer.backend.generate(
        ["<|im_start|>user\n1+1<|im_end|>\n"], Method("constant", {"tau": 1.0}), n=4,
        max_new_tokens=16, seed=1,
    )  # fmt: skip
    with torch.no_grad():
        hf = response_logprobs(model, rollouts).logprobs
    mask = rollouts.response_mask.bool()
    error = float((rollouts.behaviour_logprobs - hf)[mask].abs().max())
    record("max |vLLM raw - HF| log-prob after 2 trainer steps", error)
    assert error <= 1e-3
    trainer.backend.close()
