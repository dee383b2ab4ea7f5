"""The policy forward of the update: tau = 1 log-probs, entropies and values of response tokens.

Rows of one group share their prompt (GRPO samples G responses per prompt): the prompt runs
through the model once and its KV cache is indexed out to the group's rows, so the prompt's
share of the update's compute drops by G. The numbers equal a plain forward over prompt +
response; ``share_prompts=False`` (``algorithm.share_prompt_forward``) runs the plain one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel

from calmrl.models.compat import is_checkpointing
from calmrl.models.functional import entropy_from_logits, positions_from_mask
from calmrl.rl.value_head import ValueHead
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
    value_head: ValueHead | None = None,
) -> ResponseForward:
    """Log-probs (tau = 1) of the response tokens, the policy entropy there and, with a
    ``value_head``, the values ``V(s_t)`` from the same forward: [N, T] each.

    With ``share_prompts`` the rows of one group run their common prompt through the model
    once: the prompt's KV cache is indexed out to the rows (a differentiable gather, so the
    gradient of every row flows back into the shared prompt activations) and only the
    response tokens are run per row. With G rollouts per prompt that cuts the prompt's share
    of the update's compute by G; the numbers equal the plain forward over prompt + response.
    """
    steps = rollouts.response_ids.shape[1]
    prompt_mask = rollouts.prompt_mask
    full_mask = torch.cat([prompt_mask, rollouts.response_mask], dim=1)
    positions = positions_from_mask(full_mask)
    groups, row_to_group = torch.unique(rollouts.group_index, return_inverse=True)
    hidden = None
    if not share_prompts or len(groups) == len(rollouts) or is_checkpointing(model):
        ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], dim=1)
        # Only the logits that predict response tokens: the last T+1 positions but the final.
        with _output_projection_inputs(model, value_head is not None) as captured:
            logits = model(
                input_ids=ids,
                attention_mask=full_mask,
                position_ids=positions,
                logits_to_keep=steps + 1,
            ).logits[:, :-1]
        if captured:
            hidden = captured[0][:, :-1]
    else:
        first_row = torch.zeros(len(groups), dtype=torch.long, device=row_to_group.device)
        first_row.scatter_reduce_(
            0,
            row_to_group,
            torch.arange(len(rollouts), device=row_to_group.device),
            "amin",
            include_self=False,
        )
        width = prompt_mask.shape[1]
        with _output_projection_inputs(model, value_head is not None) as captured:
            prefix = model(
                input_ids=rollouts.prompt_ids[first_row],
                attention_mask=prompt_mask[first_row],
                position_ids=positions[first_row, :width],
                use_cache=True,
                logits_to_keep=1,
            )
            logits = prefix.logits[row_to_group]
            if steps > 1:
                cache = prefix.past_key_values
                cache.batch_select_indices(row_to_group.to(rollouts.prompt_ids.device))
                rest = model(
                    input_ids=rollouts.response_ids[:, :-1],
                    attention_mask=full_mask[:, :-1],
                    position_ids=positions[:, width:-1],
                    past_key_values=cache,
                    use_cache=True,
                ).logits
                logits = torch.cat([logits, rest], dim=1)
        if captured:
            hidden = torch.cat([captured[0][row_to_group], *captured[1:]], dim=1)
    logits = logits.float()
    logprobs = logits.log_softmax(-1).gather(-1, rollouts.response_ids.unsqueeze(-1)).squeeze(-1)
    values = value_head(hidden) if value_head is not None else None
    return ResponseForward(logprobs, entropy_from_logits(logits), values)


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
