"""`calmrl demo` end to end on a tiny model (the real run is `make demo`)."""

import json

import torch

import calmrl.rl.trainer as trainer_module
from calmrl.demo import run_training_demo
from calmrl.models import tiny_model
from calmrl.models.compat import resolve_autocast


def test_training_demo_prints_table_and_writes_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer_module, "load_model", lambda *a, **k: tiny_model(seed=12))
    out = tmp_path / "demo"
    history = run_training_demo(
        [f"train.output_dir={out}", "train.steps=2", "train.eval_every=1", "data.eval_limit=3",
         "train.eval_n=4", "train.eval_k=[1,4]", "rollout.n=4", "rollout.prompts_per_step=2",
         "rollout.max_new_tokens=6", "train.tensorboard=false"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed and "pass@4" in printed
    # The demo runs with model.autocast=auto and says what this machine chose.
    bf16 = resolve_autocast("auto", torch.device("cpu")) is torch.bfloat16
    header = f"TIS on, {'bf16 autocast' if bf16 else 'fp32'}, 2 steps"
    assert header in " ".join(printed.split())  # rich wraps the line
    assert set(history) == {"before", "after"}
    plots = out / "plots"
    for name in ("training_curves.png", "pass_at_k.png", "worst_at_k.png", "maj_at_k.png"):
        assert (plots / name).stat().st_size > 1000, name
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert steps == [0, 1, 2]  # step 0: the evaluation before training
    assert (out / "final" / "config.json").is_file()
    # Re-running the demo replaces its earlier run instead of refusing or mixing metrics.
    # A user's override wins over the demo's autocast=auto.
    run_training_demo([f"train.output_dir={out}", "train.steps=1", "train.eval_every=0",
                       "rollout.n=2", "rollout.prompts_per_step=1", "rollout.max_new_tokens=4",
                       "train.tensorboard=false", "model.autocast=null"])  # fmt: skip
    assert "TIS on, fp32, 1 steps" in " ".join(capsys.readouterr().out.split())
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()] == [1]
