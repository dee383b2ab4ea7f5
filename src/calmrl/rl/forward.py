"""The policy forward of the update: tau = 1 log-probs, entropies and values of response tokens.

Rows of one group share their prompt (GRPO samples G responses per prompt): the prompt runs
through the model once and its KV cache is indexed out to the group's rows, so the prompt's
share of the update's compute drops by G. The start all prompts of a batch share (a system
prompt, few-shot turns) runs once per optimizer step (``SharedPrefix``). The numbers equal a
plain forward over prompt + response; ``share_prompts=False``
(``algorithm.share_prompt_forward``) runs the plain one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer

from calmrl.models.compat import cache_kwargs, decoder_and_head, is_checkpointing, output_cache
from calmrl.models.functional import entropy_from_logits, positions_from_mask
from calmrl.models.head import DEFAULT_CHUNK_TOKENS, head_logprobs_entropy
from calmrl.rl.value_head import ValueHead
from calmrl.sampling.prefill import shared_prefix_length
from calmrl.sampling.rollouts import Rollouts


class ResponseForward(NamedTuple):
    logprobs: torch.Tensor  # [N, T], tau = 1
    entropy: torch.Tensor  # [N, T]
    values: torch.Tensor | None  # [N, T] with a value head


def response_logprobs(
    model: PreTrainedModel,
    rollouts: Rollouts,
    *,
    share_prompts: bool = True,
    prefix: SharedPrefix | None = None,
    value_head: ValueHead | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> ResponseForward:
    """Log-probs (tau = 1) of the response tokens, the policy entropy there and, with a
    ``value_head``, the values ``V(s_t)`` from the same forward: [N, T] each (0 at padding).

    With ``share_prompts`` the rows of one group run their common prompt through the model
    once: the prompt's KV cache is indexed out to the rows (a differentiable gather, so the
    gradient of every row flows back into the shared prompt activations) and only the
    response tokens are run per row. With G rollouts per prompt that cuts the prompt's share
    of the update's compute by G. With a ``prefix`` (``shared_prefix``) the prompts'
    common start is not run again either: its cached keys and values are reused. The
    numbers equal the plain forward over prompt + response.
    Where the head allows (``models.compat.decoder_and_head``), the decoder's hidden states
    go to ``models.head.head_logprobs_entropy``: the head runs over real tokens only, in
    chunks of ``chunk_tokens``, and the ``[N, T, V]`` logits are never held.
    """
    width = rollouts.response_ids.shape[1]
    if not rollouts.response_mask.any():  # placeholder rows only: nothing to score
        zeros = torch.zeros(rollouts.response_mask.shape, device=rollouts.response_ids.device)
        values = zeros.clone() if value_head is not None else None
        return ResponseForward(zeros, zeros.clone(), values)
    rollouts = _trim_padding(rollouts)
    projection = decoder_and_head(model)
    if projection is None:
        logits, hidden = _response_outputs(
            model, rollouts, share_prompts, prefix, value_head is not None
        )
        logits = logits.float()
        mask = rollouts.response_mask.bool()
        logprobs = logits.log_softmax(-1).gather(-1, rollouts.response_ids.unsqueeze(-1))
        logprobs = logprobs.squeeze(-1).masked_fill(~mask, 0.0)
        entropy = entropy_from_logits(logits).masked_fill(~mask, 0.0)
    else:
        decoder, weight = projection
        hidden, _ = _response_outputs(decoder, rollouts, share_prompts, prefix, False)
        logprobs, entropy = head_logprobs_entropy(
            hidden, weight, rollouts.response_ids, rollouts.response_mask, chunk=chunk_tokens
        )
    values = value_head(hidden) if value_head is not None else None
    return ResponseForward(*(_pad_to(t, width) for t in (logprobs, entropy, values)))


def _trim_padding(rollouts: Rollouts) -> Rollouts:
    """Drop the prompt columns that are padding in every row and the response columns after
    the longest response: the model computes nothing for them, and the numbers do not change
    (positions come from the mask)."""
    start = int(rollouts.prompt_mask.any(0).nonzero()[0]) if rollouts.prompt_mask.any() else 0
    end = int(rollouts.response_mask.any(0).nonzero()[-1]) + 1
    return replace(
        rollouts,
        prompt_ids=rollouts.prompt_ids[:, start:],
        prompt_mask=rollouts.prompt_mask[:, start:],
        response_ids=rollouts.response_ids[:, :end],
        response_mask=rollouts.response_mask[:, :end],
    )


def _pad_to(values: torch.Tensor | None, width: int) -> torch.Tensor | None:
    if values is None or values.shape[1] == width:
        return values
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))


def _response_outputs(
    module: torch.nn.Module,
    rollouts: Rollouts,
    share_prompts: bool,
    prefix: SharedPrefix | None,
    capture: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The outputs that predict each response token: [N, T, V] logits of a causal LM, or
    [N, T, H] hidden states of a bare decoder; plus the head's inputs when ``capture``."""
    steps = rollouts.response_ids.shape[1]
    prompt_mask = rollouts.prompt_mask
    full_mask = torch.cat([prompt_mask, rollouts.response_mask], dim=1)
    positions = positions_from_mask(full_mask)
    groups, row_to_group = torch.unique(rollouts.group_index, return_inverse=True)
    is_lm = _is_causal_lm(module)
    keep = {"logits_to_keep": steps + 1} if is_lm else {}
    hidden = None
    one_per_group = len(groups) == len(rollouts) and prefix is None
    if not share_prompts or one_per_group or is_checkpointing(module):
        ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], dim=1)
        # Only the outputs that predict response tokens: the last T+1 positions but the final.
        with _output_projection_inputs(module, capture) as captured:
            out = module(input_ids=ids, attention_mask=full_mask, position_ids=positions, **keep)
        outputs = _main_output(out, is_lm)[:, -(steps + 1) : -1]
        if captured:
            hidden = captured[0][:, :-1]
        return outputs, hidden
    first_row = torch.zeros(len(groups), dtype=torch.long, device=row_to_group.device)
    first_row.scatter_reduce_(
        0,
        row_to_group,
        torch.arange(len(rollouts), device=row_to_group.device),
        "amin",
        include_self=False,
    )
    width = prompt_mask.shape[1]
    repeats = _group_size(row_to_group, len(groups))

    def to_rows(per_group: torch.Tensor) -> torch.Tensor:
        if repeats is None:
            return per_group[row_to_group]
        return per_group.repeat_interleave(repeats, dim=0)

    with _output_projection_inputs(module, capture) as captured:
        prompts = _prompt_pass(
            module,
            rollouts.prompt_ids[first_row],
            prompt_mask[first_row],
            positions[first_row, :width],
            prefix,
        )
        outputs = to_rows(_main_output(prompts.outputs, is_lm)[:, -1:])
        if steps > 1:
            cache = output_cache(prompts.outputs)
            if repeats is None:
                cache.batch_select_indices(row_to_group.to(rollouts.prompt_ids.device))
            else:
                cache.batch_repeat_interleave(repeats)
            rest = module(
                input_ids=rollouts.response_ids[:, :-1],
                attention_mask=torch.cat(
                    [to_rows(prompts.cache_mask), rollouts.response_mask[:, :-1]], dim=1
                ),
                position_ids=positions[:, width:-1],
                **cache_kwargs(cache),
                use_cache=True,
            )
            outputs = torch.cat([outputs, _main_output(rest, is_lm)], dim=1)
    if captured:
        hidden = torch.cat([to_rows(captured[0]), *captured[1:]], dim=1)
    return outputs, hidden


def _group_size(row_to_group: torch.Tensor, groups: int) -> int | None:
    """G where the rows are ``groups`` runs of G adjacent rows each (how rollouts come), else
    None. Spreading a group's prompt pass to its rows by ``repeat_interleave`` then has a
    backward that sums blocks of rows, ~8x faster on the CPU than the accumulating scatter
    that indexing's backward runs (a demo micro-batch's keys of one layer, forward + backward,
    fp32: 3.9 vs 0.5 ms)."""
    if groups < 1:
        return None
    size = len(row_to_group) // groups
    layout = torch.arange(groups, device=row_to_group.device).repeat_interleave(size)
    return (
        size if size * groups == len(row_to_group) and torch.equal(row_to_group, layout) else None
    )


@dataclass
class SharedPrefix:
    """The tokens every prompt of a batch starts with (a system prompt, few-shot turns: 149 of
    the demo's 180), run through the model once for all of the batch's micro-batches.

    Each micro-batch attends to ``leaves``, the prefix's keys and values computed without a
    graph, and every backward accumulates its gradient into them; ``backward`` then runs the
    prefix again with a graph and back-propagates the sum once. So the prefix costs two
    forwards and one backward per optimizer step however many micro-batches and groups share
    it, holds no activations between them (recomputation, as in activation checkpointing;
    the keys and values come out the same, the weights have not moved), and the gradients
    equal those of running it in every row.
    """

    ids: list[int]
    leaves: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [1, kv heads, S, head dim]
    module: torch.nn.Module
    config: Any
    autocast: torch.dtype | None  # what the keys and values were computed under
    rng_state: torch.Tensor  # and the random state (dropout draws the same masks again)

    def cache(self, rows: int) -> DynamicCache:
        """A cache holding the prefix for ``rows`` rows, to continue with their suffixes."""
        return DynamicCache(
            ddp_cache_data=[
                (keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
                for keys, values in self.leaves
            ],
            config=self.config,
        )

    def starts(self, row: list[int]) -> bool:
        return len(row) > len(self.ids) and row[: len(self.ids)] == self.ids

    def backward(self) -> None:
        """The prefix's backward with the gradient the micro-batches left in the leaves."""
        grads = [leaf.grad for kv in self.leaves for leaf in kv]
        if all(grad is None for grad in grads):
            return
        device = self.leaves[0][0].device
        autocast = (
            torch.autocast(device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices), torch.enable_grad(), autocast:
            _set_rng_state(device, self.rng_state)
            attached = [t for kv in _keys_values(self.module, self.ids, device) for t in kv]
        pairs = [(a, g) for a, g in zip(attached, grads, strict=True) if g is not None]
        torch.autograd.backward([a for a, _ in pairs], [g for _, g in pairs])


def shared_prefix(model: PreTrainedModel, rollouts: Rollouts) -> SharedPrefix | None:
    """Run the prefix every prompt of ``rollouts`` starts with once, on one row, under the
    caller's autocast; None where there is none, or the model's cache is not plain per-layer
    keys and values (sliding-window layers keep only their window) or checkpointing disables
    the cache. Its leaves take gradients where grad mode is on and the model trains."""
    layers = DynamicCache(config=model.config).layers
    if is_checkpointing(model) or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    rows = _tokens(rollouts.prompt_ids, rollouts.prompt_mask)
    length = shared_prefix_length(rows)
    if length < 1:  # none shared, or a placeholder row with no prompt
        return None
    projection = decoder_and_head(model)
    module = model if projection is None else projection[0]
    ids, device = rows[0][:length], rollouts.prompt_ids.device
    trains = torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters())
    rng_state = _rng_state(device)
    with torch.no_grad():
        leaves = [
            tuple(t.requires_grad_(trains) for t in kv) for kv in _keys_values(module, ids, device)
        ]
    autocast = (
        torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    )
    return SharedPrefix(ids, leaves, module, model.config, autocast, rng_state)


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _keys_values(
    module: torch.nn.Module, ids: list[int], device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    last_only = {"logits_to_keep": 1} if _is_causal_lm(module) else {}
    out = module(input_ids=torch.tensor([ids], device=device), use_cache=True, **last_only)
    return [(layer.keys, layer.values) for layer in output_cache(out).layers]


class _PromptPass(NamedTuple):
    outputs: Any  # the forward's output at each prompt's last position, with the KV cache
    cache_mask: torch.Tensor  # [K, C]: which cached positions are tokens


def _prompt_pass(
    module: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    prefix: SharedPrefix | None,
) -> _PromptPass:
    """One forward over K prompts ([K, W], left-padded), with the KV cache.

    With a ``prefix`` they all start with, only each prompt's own suffix runs, left-padded
    behind the prefix's cached keys and values: the cache holds [prefix | padding | suffix]
    per prompt, and positions still count tokens, so the numbers equal one forward over the
    padded prompts.
    """
    last_only = {"logits_to_keep": 1} if _is_causal_lm(module) else {}
    rows = _tokens(ids, mask)
    if prefix is None or not all(prefix.starts(row) for row in rows):
        out = module(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **last_only
        )
        return _PromptPass(out, mask)
    shared = len(prefix.ids)
    own = mask.sum(1) - shared
    suffix_width = int(own.max())
    suffix_mask = torch.arange(suffix_width, device=ids.device) >= suffix_width - own[:, None]
    cache_mask = torch.cat([torch.ones_like(mask[:, :shared]), suffix_mask.to(mask.dtype)], 1)
    out = module(
        input_ids=ids[:, -suffix_width:],
        attention_mask=cache_mask,
        position_ids=positions_from_mask(cache_mask)[:, shared:],
        **cache_kwargs(prefix.cache(len(rows))),
        use_cache=True,
        **last_only,
    )
    return _PromptPass(out, cache_mask)


def _tokens(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Each row's tokens, without its padding."""
    return [row[keep].tolist() for row, keep in zip(ids, mask.bool(), strict=True)]


def _is_causal_lm(module: torch.nn.Module) -> bool:
    return hasattr(module, "get_output_embeddings") and module.get_output_embeddings() is not None


def _main_output(out: Any, is_lm: bool) -> torch.Tensor:
    return out.logits if is_lm else out.last_hidden_state


@contextlib.contextmanager
def _output_projection_inputs(
    model: PreTrainedModel, enabled: bool
) -> Iterator[list[torch.Tensor]]:
    """Collect the inputs of the model's output projection (final normed hidden states), one
    tensor per forward call: the value head reads them, for any architecture."""
    captured: list[torch.Tensor] = []
    if not enabled:
        yield captured
        return

    def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], _output: Any) -> None:
        captured.append(args[0])

    handle = model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
