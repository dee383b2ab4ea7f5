"""Nothing lost, nothing half-done: overwrite, signals, corrupt checkpoints, cut-off metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calmrl.config import load_config
from calmrl.models import tiny_model
from calmrl.rl.trainer import Trainer

BASE = [
    "data.train=arith-add-1",
    "data.few_shot=null",
    "data.math_suffix=false",
    "data.train_limit=16",
    "rollout.method=constant",
    "rollout.params={tau: 1.0}",
    "rollout.n=4",
    "rollout.prompts_per_step=2",
    "rollout.max_new_tokens=4",
    "train.eval_every=0",
    "train.tensorboard=false",
    "algorithm.micro_batch_size=8",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = tiny_model(seed=3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def config(run: Path, model_dir: Path, *extra: str):
    return load_config(None, [*BASE, f"train.output_dir={run}", f"model.name={model_dir}", *extra])


def train(run: Path, model_dir: Path, *extra: str, resume: bool = False) -> dict:
    return Trainer(config(run, model_dir, *extra), resume=resume).train()


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_failed_overwrite_leaves_the_previous_run_and_the_users_files(tiny_dir, tmp_path):
    run = tmp_path / "run"
    train(run, tiny_dir, "train.steps=1")
    (run / "plots").mkdir()
    (run / "plots" / "mine.png").write_bytes(b"user")
    (run / "evals").mkdir()
    (run / "evals" / "notes.json").write_text("{}")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    # Bad input: refused before anything is moved.
    with pytest.raises(ValueError, match="model.name"):
        train(run, Path("/nonexistent"), "train.steps=1", "train.overwrite=true")
    # A failure after the model loaded, before the first checkpoint: the old run comes back.
    trainer = Trainer(config(run, tiny_dir, "train.steps=2", "train.overwrite=true"))
    trainer.train_step = lambda: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_overwrite_replaces_only_what_calmrl_wrote(tiny_dir, tmp_path):
    run = tmp_path / "run"
    train(run, tiny_dir, "train.steps=1")
    (run / "notes.txt").write_text("mine")
    train(run, tiny_dir, "train.steps=2", "train.overwrite=true")
    assert steps_logged(run) == [1, 2]
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / ".calmrl-previous").exists()


def test_a_directory_of_user_files_is_not_a_run(tiny_dir, tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "figure.png").write_bytes(b"user")
    train(tmp_path, tiny_dir, "train.steps=1")  # no overwrite needed: nothing of calmrl's there
    assert (tmp_path / "plots" / "figure.png").read_bytes() == b"user"


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tiny_dir, tmp_path):
    run = tmp_path / "run"
    train(run, tiny_dir, "train.steps=2", "train.save_every=1")
    weights = run / "checkpoints" / "step-000002" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="step-000002 is unreadable"):
        train(run, tiny_dir, "train.steps=3", "train.save_every=1", resume=True)
    assert steps_logged(run) == [1, 2, 3]


def test_a_cut_off_last_metrics_line_does_not_block_resume(tiny_dir, tmp_path):
    run = tmp_path / "run"
    train(run, tiny_dir, "train.steps=1", "train.save_every=1")
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 2, "reward/me')  # the disk filled up mid-line
    with pytest.warns(UserWarning, match="cut-off last line"):
        train(run, tiny_dir, "train.steps=2", "train.save_every=1", resume=True)
    assert steps_logged(run) == [1, 2]


def test_resume_does_not_carry_the_nonfinite_streak(tiny_dir, tmp_path):
    import torch

    run = tmp_path / "run"
    train(run, tiny_dir, "train.steps=1", "train.save_every=1")
    state_file = run / "checkpoints" / "step-000001" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=False)
    torch.save({**state, "bad_steps": 2}, state_file)  # the run had a streak going
    resumed = Trainer(config(run, tiny_dir, "train.steps=2"), resume=True)
    assert resumed.step == 1 and resumed.bad_steps == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_checkpoints_and_exits_non_zero(tiny_dir, tmp_path, signum):
    run = tmp_path / "run"
    args = [*BASE, f"train.output_dir={run}", f"model.name={tiny_dir}", "train.steps=500"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "calmrl", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for line in proc.stdout:
            if line.startswith("step 2/"):
                break
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: interrupted by {signum.name}")
    step = int(lines[0].split("after step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step-{step:06d}" / "trainer_state.pt").is_file()
    assert steps_logged(run) == list(range(1, step + 1))
    started = time.monotonic()
    resumed = subprocess.run(
        [sys.executable, "-m", "calmrl", "train", "--resume", str(run), f"train.steps={step + 1}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert steps_logged(run) == list(range(1, step + 2))
    assert time.monotonic() - started < 120
