import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The offline math data lies beside the checkout on the project's machines (CI too).
_SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
if os.path.isdir(_SHARED_DATA):
    os.environ.setdefault("CALMRL_DATA_DIR", os.path.abspath(_SHARED_DATA))

import pytest  # noqa: E402  (the environment above must be set first)
import torch  # noqa: E402

# Tiny test models gain nothing from threads, and OpenMP spinning collapses under load.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    from calmrl.models import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny Llama saved as a model directory (``models/tiny-llama``), for code that loads."""
    from calmrl.models import tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    model, tokenizer = tiny_model("llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def load_benchmark():
    """Import a script of ``benchmarks/`` by name (they are scripts, not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))  # for their ``from common import ...``

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def calmrl_cli(monkeypatch, capsys):
    """Run ``calmrl ARGS...`` in this process; returns (exit code, stdout, stderr)."""
    import sys

    from calmrl import cli

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["calmrl", *args])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        out, err = capsys.readouterr()
        return exit_info.value.code or 0, out, err

    return run
