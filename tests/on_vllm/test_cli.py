"""``calmrl sample`` and ``calmrl eval`` with ``--backend vllm``."""

from __future__ import annotations

import json
import sys

import pytest
from vllm_testing import require_vllm, tiny_dir

pytestmark = pytest.mark.vllm

ENGINE = ["--vllm", "max_model_len=512", "--vllm", f"kv_cache_memory_bytes={1 << 28}"]


def _run(monkeypatch, argv):
    from calmrl import cli

    monkeypatch.setattr(sys, "argv", ["calmrl", *argv])
    try:
        cli.main()
    except SystemExit as stop:
        assert stop.code in (0, None), f"calmrl {argv[0]} exited {stop.code}"


def test_sample_and_eval_run_on_vllm(tmp_path, monkeypatch):
    require_vllm()
    _, _, model_dir = tiny_dir(tmp_path / "tiny", seed=6)
    out = tmp_path / "samples.jsonl"
    _run(monkeypatch, ["sample", "--prompt", "1+1?", "--model", str(model_dir), "--backend",
                       "vllm", *ENGINE, "-n", "3", "--max-new-tokens", "12", "--with-tokens",
                       "--method", "ead-paper", "-p", "d0=2.0", "-o", str(out)])  # fmt: skip
    records = [json.loads(line) for line in out.open()]
    assert len(records) == 3
    assert all(len(r["behaviour_logprobs"]) == r["num_tokens"] for r in records)
    results = tmp_path / "eval"
    _run(monkeypatch, ["eval", "-d", "arith-add-1", "--limit", "2", "--model", str(model_dir),
                       "--backend", "vllm", *ENGINE, "-n", "2", "--max-new-tokens", "8", "-m",
                       "ead-paper", "-m", "cold=constant:tau=0.6", "-o", str(results)])  # fmt: skip
    saved = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}
    assert set(saved) == {"ead-paper", "cold"}
    assert saved["cold"]["config"]["backend"] == "vllm"
