"""Batched, KV-cached generation over any HF causal LM, recording exact per-token log-probs.

One decode step, for the rows still running:

    h                  = logits of the last position (fp32)
    logprobs           = log_softmax(h)[token]                    (tau = 1: pi_old for free)
    entropies          = H(softmax(h))
    behaviour_logprobs = log_softmax(truncate(h / tau_t))[token]  (what the token was drawn from)

The behaviour distribution comes from a ``TokenSampler``; the default applies a temperature
schedule and top-k/top-p/min-p, LED (``calmrl.sampling.led``) plugs in the same way. Each row
draws from its own random stream (``calmrl.sampling.random``), so its tokens do not depend on
the batch it runs in. Rows that finish are dropped from the batch and its KV cache once enough
of them have, so short answers stop costing compute. ``HFBackend`` serves this engine as a
``RolloutBackend``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from calmrl.models.attention import route_decode_attention
from calmrl.models.compat import (
    cache_kwargs,
    eos_token_ids,
    output_cache,
    supports_logits_to_keep,
)
from calmrl.models.functional import entropy_from_logits, positions_from_mask
from calmrl.models.linear_kernel import LinearKernel, use_linear_kernel
from calmrl.sampling.backend import register_backend
from calmrl.sampling.methods import Method, make_method_sampler
from calmrl.sampling.prefill import DEFAULT_TOKEN_BUDGET, left_pad, prefill
from calmrl.sampling.random import row_seeds, sample_tokens
from calmrl.sampling.rollouts import Rollouts
from calmrl.sampling.samplers import TemperatureSampler, TokenSampler
from calmrl.sampling.schedules import Schedule

# Compact the batch once this fraction of the running rows has finished.
_COMPACT_FRACTION = 0.25


class NonFiniteLogitsError(FloatingPointError):
    """The model produced NaN or +inf logits: nothing can be sampled from them."""


def _encode(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str] | Sequence[Sequence[int]]
) -> list[list[int]]:
    if len(prompts) == 0:
        raise ValueError("prompts: at least one prompt is required")
    if isinstance(prompts[0], str):
        # Prompts are already formatted (chat template included), so add no special tokens.
        encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    else:
        encoded = [list(p) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompts[{i}]: empty prompt; give at least one token")
    return encoded


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    schedule: Schedule | TokenSampler,
    *,
    n: int = 1,
    max_new_tokens: int = 256,
    seed: int | None = None,
    step: int = 0,
    prompt_indices: Sequence[int] | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    stop: Sequence[str] | None = None,
    ignore_eos: bool = False,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    preallocate_cache: bool = True,
    prefill_tokens: int = DEFAULT_TOKEN_BUDGET,
    share_prefix: bool = True,
    linear_kernel: LinearKernel = "auto",
) -> Rollouts:
    """Sample ``n`` responses per prompt; rows of one prompt are adjacent (``group_index``).

    ``schedule`` is a temperature schedule (combined with ``top_k``/``top_p``/``min_p``) or a
    ready ``TokenSampler`` such as LED. ``step`` is the global training step for step-aware
    schedules. Row ``j`` of prompt ``i`` draws from a stream seeded by (``seed``, ``step``,
    ``prompt_indices[i]``, ``j``), ``prompt_indices`` defaulting to 0, 1, ...: the same prompt
    index gives the same tokens in any batch. ``batch_size`` bounds the rows decoded
    together, rounded to whole groups of ``n`` (each prompt is prefilled once and its KV
    cache shared by its ``n`` rows);
    ``progress`` is called with the number of rows finished after each batch. The same
    ``seed`` gives the same tokens. ``ignore_eos`` keeps every row going to
    ``max_new_tokens`` (benchmarks: equal work whatever the samples). The KV cache is
    written in place (``calmrl.sampling.kv_cache``); ``preallocate_cache=False`` uses HF's
    growing ``DynamicCache`` instead (same numbers; for comparison). Prompts are prefilled
    in length-sorted buckets of at most ``prefill_tokens`` padded tokens
    (``calmrl.sampling.prefill``): no compute on padding, memory bounded; with
    ``share_prefix`` the prefix all prompts start with (a system prompt) is computed once.
    On the CPU, decode-step attention packs grouped queries onto their key/value heads
    (``calmrl.models.attention``). fp32 linear
    layers run on ``linear_kernel`` (``calmrl.models.linear_kernel``; ``auto``: oneDNN on AMD
    CPUs with AVX-512, PyTorch's default elsewhere).
    """
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if hasattr(schedule, "behaviour_log_probs"):
        if top_k is not None or top_p is not None or min_p is not None:
            raise ValueError("top_k/top_p/min_p: set them on the sampler, not on generate()")
        sampler = schedule
    else:
        sampler = TemperatureSampler(schedule, top_k=top_k, top_p=top_p, min_p=min_p)

    encoded = _encode(tokenizer, prompts)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    indices = list(range(len(encoded))) if prompt_indices is None else list(prompt_indices)
    if len(indices) != len(encoded):
        raise ValueError(f"prompt_indices: got {len(indices)} for {len(encoded)} prompts")
    device = next(model.parameters()).device

    # Whole groups per batch, so each prompt is prefilled once and its cache shared by n rows.
    prompts_per_batch = max(1, (batch_size or n * len(encoded)) // n)
    parts = []
    # Each routes nothing outside its case: CPU decode steps; fp32 on an AMD CPU with AVX-512.
    with route_decode_attention(), use_linear_kernel(model, linear_kernel):
        for start in range(0, len(encoded), prompts_per_batch):
            part = _generate_batch(
                model,
                tokenizer,
                encoded[start : start + prompts_per_batch],
                sampler,
                n=n,
                max_new_tokens=max_new_tokens,
                step=step,
                stop=list(stop or []),
                ignore_eos=ignore_eos,
                seeds=row_seeds(seed, step, indices[start : start + prompts_per_batch], n, device),
                preallocate=preallocate_cache,
                prefill_tokens=prefill_tokens,
                share_prefix=share_prefix,
            )
            part.group_index = part.group_index + start
            parts.append(part)
            if progress is not None:
                progress(len(part))
    return Rollouts.concat(parts, pad_token_id=tokenizer.pad_token_id)


def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_rows: list[list[int]],
    sampler: TokenSampler,
    *,
    n: int,
    max_new_tokens: int,
    step: int,
    stop: list[str],
    ignore_eos: bool,
    seeds: torch.Tensor,
    preallocate: bool,
    prefill_tokens: int,
    share_prefix: bool,
) -> Rollouts:
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    eos = [] if ignore_eos else eos_token_ids(model, tokenizer)
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    prompt_ids, prompt_mask = left_pad(prompt_rows, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    batch = len(prompt_rows) * n

    shape = (batch, max_new_tokens)
    response_ids = torch.full(shape, pad_id, dtype=torch.long, device=device)
    response_mask = torch.zeros(shape, dtype=torch.long, device=device)
    record = {
        name: torch.zeros(shape, dtype=torch.float32, device=device)
        for name in ("temperatures", "behaviour_logprobs", "logprobs", "entropies")
    }
    finish = ["length"] * batch
    stop_window = max((len(s) for s in stop), default=0) + 1

    # ``active`` maps the rows of the (compacted) model batch back to output rows.
    active = torch.arange(batch, device=device)
    position_ids = positions_from_mask(prompt_mask)
    forward_kwargs = {"use_cache": True, "output_hidden_states": sampler.needs_hidden_states}
    if supports_logits_to_keep(model):
        forward_kwargs["logits_to_keep"] = 1
    outputs = prefill(  # then each decode step's model outputs
        model,
        prompt_ids,
        prompt_mask,
        capacity=prompt_ids.shape[1] + max_new_tokens,
        forward_kwargs=forward_kwargs,
        preallocate=preallocate,
        token_budget=prefill_tokens,
        share_prefix=share_prefix,
    )
    if n > 1:  # expand each prompt's state to its n rows
        outputs.cache.batch_repeat_interleave(n)
        outputs.logits = outputs.logits.repeat_interleave(n, dim=0)
        if sampler.needs_hidden_states:
            outputs.hidden_states = tuple(
                h.repeat_interleave(n, dim=0) for h in outputs.hidden_states
            )
        prompt_ids, prompt_mask = (
            prompt_ids.repeat_interleave(n, 0),
            prompt_mask.repeat_interleave(n, 0),
        )
        position_ids = position_ids.repeat_interleave(n, dim=0)
    attention_mask, cache = prompt_mask, outputs.cache
    sampler.reset(batch, device)
    running = torch.ones(batch, dtype=torch.bool, device=device)  # over the model batch

    for t in range(max_new_tokens):
        logits = outputs.logits[:, -1].float()
        _check_finite(logits, t)
        hidden = (
            tuple(h[:, -1] for h in outputs.hidden_states) if sampler.needs_hidden_states else None
        )
        positions = torch.full((len(active),), t, device=device)
        behaviour, tau = sampler.behaviour_log_probs(logits, positions, step, hidden, active)
        token = sample_tokens(behaviour, seeds[active], t)
        token = torch.where(running, token, torch.full_like(token, pad_id))

        target = logits.log_softmax(dim=-1)
        entropy = entropy_from_logits(logits, target)
        response_ids[active, t] = token
        response_mask[active, t] = running.long()
        values = {
            "temperatures": tau.float(),
            "behaviour_logprobs": behaviour.gather(-1, token[:, None]).squeeze(-1),
            "logprobs": target.gather(-1, token[:, None]).squeeze(-1),
            "entropies": entropy,
        }
        for name, value in values.items():
            record[name][active, t] = torch.where(running, value, 0.0)
        sampler.update(token, active, entropy)

        hit_eos = running & torch.isin(token, eos_ids)
        for i in hit_eos.nonzero().flatten().tolist():
            finish[int(active[i])] = "eos"
        running &= ~hit_eos
        if stop:
            for i in running.nonzero().flatten().tolist():
                row = int(active[i])
                tail = tokenizer.decode(response_ids[row, max(0, t + 1 - stop_window) : t + 1])
                if any(s in tail for s in stop):
                    finish[row] = "stop"
                    running[i] = False
        if not running.any() or t == max_new_tokens - 1:
            break

        if (~running).sum() >= max(1, _COMPACT_FRACTION * len(active)):
            keep = running.nonzero().flatten()
            cache.batch_select_indices(keep)
            active, running = active[keep], running[keep]
            attention_mask, position_ids, token = (
                attention_mask[keep],
                position_ids[keep],
                token[keep],
            )
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], 1)
        position_ids = position_ids[:, -1:] + 1
        outputs = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
            **forward_kwargs,
        )
        cache = output_cache(outputs)

    width = int(response_mask.sum(-1).max().item()) if batch else 0
    width = max(width, 1)
    response_ids, response_mask = response_ids[:, :width], response_mask[:, :width]
    texts = _decode(tokenizer, response_ids, response_mask, stop)
    return Rollouts(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        group_index=torch.arange(len(prompt_rows)).repeat_interleave(n),
        texts=texts,
        finish_reasons=finish,
        **{name: value[:, :width] for name, value in record.items()},
    )


def _check_finite(logits: torch.Tensor, t: int) -> None:
    """NaN or +inf logits leave nothing to sample. One reduction decides in the common case
    (a finite sum); only then are the two element-wise tests run (-inf logits are allowed)."""
    if torch.isfinite(logits.sum()):
        return
    if torch.isnan(logits).any() or torch.isposinf(logits).any():
        raise NonFiniteLogitsError(f"model returned non-finite logits at generated token {t}")


def _decode(
    tokenizer: PreTrainedTokenizerBase,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    stop: list[str],
) -> list[str]:
    texts = []
    for ids, mask in zip(response_ids.tolist(), response_mask.tolist(), strict=True):
        text = tokenizer.decode(
            [i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=True
        )
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        texts.append(text[:cut] if cut >= 0 else text)
    return texts


class HFBackend:
    """calmrl's engine as a ``RolloutBackend``: it samples from the module it was given (the
    trainer's own), so there are no weights to sync."""

    name = "hf"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int | None = None,
    ):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        method: Method,
        *,
        n: int = 1,
        max_new_tokens: int = 256,
        seed: int | None = None,
        step: int = 0,
        prompt_indices: Sequence[int] | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Rollouts:
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            make_method_sampler(method, self.model),
            n=n,
            max_new_tokens=max_new_tokens,
            seed=seed,
            step=step,
            prompt_indices=prompt_indices,
            stop=stop,
            ignore_eos=ignore_eos,
            batch_size=self.batch_size,
            progress=progress,
        )

    def check(self, method: Method) -> None:
        make_method_sampler(method, self.model)

    def sync_weights(self, model: PreTrainedModel) -> None:
        self.model = model

    def close(self) -> None:
        pass


register_backend("hf", HFBackend)
