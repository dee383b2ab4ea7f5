"""The TRL suite (``make test-trl``, marker ``trl``): TRL 1.16 inside ``.venv-vllm``.

Modules import TRL and vLLM only inside fixtures and tests, so ``make test`` (neither
installed) still collects them and deselects them by marker. One engine per module."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The engine must run in this process: the trainer syncs weights into it in place.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # V2 needs Triton, absent on CPU
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the tiny model needs little
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The vLLM suite's helpers (tiny head_dim-64 model) serve here too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "on_vllm"))
