"""Helpers of the vLLM suite: engines on tiny models, calmrl's reference log-probs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

MEASURED: list[tuple[str, str]] = []


def record(name: str, value: Any) -> None:
    """A number for the summary at the end of the run (README and docs quote them)."""
    MEASURED.append((name, f"{value:.3g}" if isinstance(value, float) else str(value)))


def require_vllm() -> Any:
    try:
        import vllm
    except ImportError as error:  # pragma: no cover - the main venv
        pytest.skip(f"vLLM is not installed ({error}); `make test-vllm` builds .venv-vllm")
    return vllm


def tiny_dir(path: Path, seed: int = 1) -> tuple[Any, Any, Path]:
    """A tiny head_dim-64 llama (vLLM's CPU attention rejects head_dim 16), saved for vLLM."""
    from calmrl.models import tiny_model

    model, tokenizer = tiny_model(hidden_size=128, head_dim=64, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer, path


def start_engine(path: Path, **kwargs: Any) -> Any:
    require_vllm()
    from vllm import LLM

    settings = {
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 512,
        "max_num_seqs": 64,
        "kv_cache_memory_bytes": 1 << 28,
        "seed": 0,
        "logprobs_mode": "processed_logprobs",
        **kwargs,
    }
    return LLM(model=str(path), tokenizer=str(path), **settings)


def stop_engine(llm: Any) -> None:
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None:
        core.shutdown()


def calmrl_behaviour(
    model: Any,
    prompt: list[int],
    tokens: list[int],
    name: str,
    params: dict[str, Any],
    step: int,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """calmrl's behaviour log-probs of ``tokens`` after ``prompt``: its own sampler (the one
    the HF engine uses) run over one HF forward of the sequence."""
    from calmrl.models.functional import entropy_from_logits
    from calmrl.sampling import make_sampler

    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].float()
    sampler = make_sampler(name, params, top_k=top_k, top_p=top_p)
    sampler.reset(1, torch.device("cpu"))
    out = []
    for t, token in enumerate(tokens):
        h = logits[t : t + 1]
        log_probs, _ = sampler.behaviour_log_probs(
            h, torch.tensor([t]), step, None, torch.tensor([0])
        )
        out.append(log_probs[0, token])
        sampler.update(
            torch.tensor([token]), torch.tensor([0]), entropy_from_logits(h, h.log_softmax(-1))
        )
    return torch.stack(out)


def sampled(output: Any) -> tuple[list[int], torch.Tensor]:
    """A vLLM completion's tokens and the processed log-prob of each."""
    completion = output.outputs[0]
    ids = list(completion.token_ids)
    return ids, torch.tensor(
        [lp[t].logprob for lp, t in zip(completion.logprobs, ids, strict=True)]
    )


def half_rewarded(response: str, gold: str) -> float:
    """About half of random responses score 1, so groups carry a learning signal."""
    return float(bool(response) and ord(response[0]) % 2 == 0)
