"""The process-wide CPU settings ``load_model`` makes: glibc keeps freed memory, oneDNN's kernel
cache is bounded, and a user's own settings win."""

import os
import subprocess
import sys

from calmrl.models import compat


def test_kernel_cache_is_bounded_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    compat.bound_kernel_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")
    compat.bound_kernel_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "1024"


def test_load_model_bounds_the_kernel_cache_before_the_model_loads(tiny_llama_dir):
    # A fresh process: the variable must be set by the time load_model returns, and before
    # it loads (load_model calls bound_kernel_cache first; checked by patching from_pretrained).
    code = (
        "import os, transformers\n"
        "seen = []\n"
        "original = transformers.AutoModelForCausalLM.from_pretrained\n"
        "def spy(*a, **k):\n"
        "    seen.append(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'))\n"
        "    return original(*a, **k)\n"
        "transformers.AutoModelForCausalLM.from_pretrained = spy\n"
        "from calmrl.models import load_model\n"
        f"load_model({str(tiny_llama_dir)!r})\n"
        "print(seen[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "64"


def test_keep_freed_memory_switches_and_opts_out(monkeypatch):
    monkeypatch.delenv("CALMRL_KEEP_FREED_MEMORY", raising=False)
    assert compat.keep_freed_memory() is True  # glibc on the machines calmrl tests on
    monkeypatch.setenv("CALMRL_KEEP_FREED_MEMORY", "0")
    assert compat.keep_freed_memory() is False
    assert compat.keep_freed_memory(enabled=False) is True  # glibc's thresholds restored
    monkeypatch.delenv("CALMRL_KEEP_FREED_MEMORY")
    assert compat.keep_freed_memory() is True
