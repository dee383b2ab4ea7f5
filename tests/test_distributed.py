"""Data parallel training under ``torchrun --nproc_per_node=2`` (gloo, CPU, tiny model): the
results do not depend on the world size, rank 0 alone writes, a killed or failing rank ends
the job, and resume after kill -9 is bit-exact. Run with ``make test-dist``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from calmrl.models import tiny_model

pytestmark = pytest.mark.dist
TESTS = Path(__file__).parent
TIMEOUT = 300  # seconds for any one torchrun job


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    model, tokenizer = tiny_model(seed=3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def overrides(tiny_dir: Path, run: Path, *extra: str) -> list[str]:
    return [
        f"model.name={tiny_dir}",
        f"train.output_dir={run}",
        "data.train=arith-add-1",
        "data.few_shot=null",
        "data.math_suffix=false",
        "data.train_limit=16",
        "rollout.method=ead",
        "rollout.params={tau_min: 0.3, d0: 3.0}",
        "rollout.n=4",
        "rollout.prompts_per_step=4",
        "rollout.max_new_tokens=6",
        "reward.name=dist_helpers:even_first_char",
        "algorithm.micro_batch_size=3",
        "optim.lr=1e-4",
        "train.eval_every=0",
        "train.tensorboard=false",
        "train.steps=3",
        "train.dist_timeout_s=60",
        *extra,
    ]


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def command(nproc: int, *args: str) -> list[str]:
    if nproc == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", *args]  # fmt: skip


def run(nproc: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command(nproc, *args), capture_output=True, text=True, timeout=TIMEOUT, env=env()
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def train(nproc: int, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return run(nproc, "-m", "calmrl", "train", *args, check=check)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_one_and_two_ranks_sample_the_same_tokens(tiny_dir, tmp_path):
    script = str(TESTS / "dist_helpers.py")
    dumps = {}
    for nproc in (1, 2):
        out = tmp_path / f"rollouts-{nproc}.json"
        run(nproc, script, str(out), *overrides(tiny_dir, tmp_path / f"run{nproc}"))
        dumps[nproc] = json.loads(out.read_text())
    assert [r["key"] for r in dumps[1]] == [r["key"] for r in dumps[2]] and dumps[1]
    for one, two in zip(dumps[1], dumps[2], strict=True):
        assert one["tokens"] == two["tokens"], one["key"]
        assert one["behaviour"] == pytest.approx(two["behaviour"], abs=1e-5)


def test_one_and_two_ranks_train_to_the_same_weights_and_rank_0_alone_logs(tiny_dir, tmp_path):
    runs = {nproc: tmp_path / f"run{nproc}" for nproc in (1, 2)}
    for nproc, run_dir in runs.items():
        train(
            nproc,
            overrides(
                tiny_dir, run_dir, "train.save_every=3", "algorithm.top_entropy_quantile=0.5"
            ),
        )
    one, two = final_weights(runs[1]), final_weights(runs[2])
    assert one.keys() == two.keys()
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst <= 1e-5, worst
    lines = metrics(runs[2])
    assert [line["step"] for line in lines] == [1, 2, 3]  # one file, one line per step
    assert all(line["dist/world_size"] == 2 for line in lines)
    for a, b in zip(metrics(runs[1]), lines, strict=True):
        for key in ("reward/mean", "rollout/tokens", "rollout/entropy_mean", "tis/mean"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert not list(runs[2].glob("**/*rank*"))  # no per-rank files


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(p) for p in handle.read().split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_one_rank_ends_the_job_and_resume_is_bit_exact(tiny_dir, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    common = ["train.save_every=1", "train.steps=4"]
    train(2, overrides(tiny_dir, full, *common))
    proc = subprocess.Popen(
        command(2, "-m", "calmrl", "train", *overrides(tiny_dir, split, *common, "train.steps=40")),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env(),
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if line.startswith("step 2/"):
                break
        ranks = children(proc.pid)
        assert len(ranks) == 2
        os.kill(ranks[-1], signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    # Resume at the same world size, to the uninterrupted run's length.
    train(2, ["--resume", str(split), "train.steps=4"])
    a, b = final_weights(full), final_weights(split)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [line["step"] for line in metrics(split)] == [1, 2, 3, 4]


def test_a_raising_rank_ends_the_job_with_an_error_naming_it(tiny_dir, tmp_path):
    started = time.monotonic()
    args = overrides(tiny_dir, tmp_path / "run", "reward.name=dist_helpers:fails_on_rank_one")
    done = train(2, args, check=False)
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in done.stderr
    assert time.monotonic() - started < TIMEOUT


def test_prompts_fewer_than_ranks_is_one_clear_line(tiny_dir, tmp_path):
    done = train(
        2, overrides(tiny_dir, tmp_path / "run", "rollout.prompts_per_step=1"), check=False
    )
    assert done.returncode != 0
    assert "error: rank 0: rollout.prompts_per_step: 1 prompts cannot feed 2 ranks" in done.stderr


def test_fsdp2_steps_equal_ddp_steps_and_resume(tiny_dir, tmp_path):
    """Sharded parameters (``fully_shard`` per layer): the same weights as replicated ones,
    and a checkpoint that resumes (full state dicts gathered to rank 0)."""
    ddp, fsdp, split = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "split"
    train(2, overrides(tiny_dir, ddp, "train.steps=2"))
    train(2, overrides(tiny_dir, fsdp, "train.steps=2", "train.parallel=fsdp2"))
    a, b = final_weights(ddp), final_weights(fsdp)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5, worst
    common = ["train.parallel=fsdp2", "train.save_every=1"]
    train(2, overrides(tiny_dir, split, *common, "train.steps=1"))
    train(2, ["--resume", str(split), "train.steps=2"])
    c = final_weights(split)
    worst = max(float((b[k] - c[k]).abs().max()) for k in b)
    assert worst <= 1e-6, worst
    assert [line["step"] for line in metrics(split)] == [1, 2]
