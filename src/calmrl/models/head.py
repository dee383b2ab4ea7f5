"""Token log-probs and entropies from hidden states, without the ``[rows, T, V]`` logits.

The update needs, per response token, ``log p(token)`` and ``H(p)`` under ``p = softmax(W h)``.
Materialising the fp32 logits of a micro-batch, their log-softmax and the gradients of both
costs several ``[rows, T, V]`` tensors (16 x 48 x 49152 floats are 150 MB each) and spends the
lm_head and the vocabulary passes on padded positions too. ``head_logprobs_entropy`` runs the
projection only over real tokens, ``chunk`` tokens at a time, keeps just the log-sum-exp per
token, and recomputes each chunk's logits in the backward pass (as fused linear cross-entropy
kernels do). With ``z = W h``, ``p = softmax(z)``, ``l = log p``, ``H = -sum_v p_v l_v``:

    d log p(y) / dz = onehot(y) - p            dH / dz = -p * (l + H)

Under ``torch.autocast`` the projection runs in the autocast dtype, as the model's own head
would; the softmax math is fp32 throughout.
"""

from __future__ import annotations

from typing import Any

import torch

DEFAULT_CHUNK_TOKENS = 1024


def _compute_dtype(device: torch.device, weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return weight.dtype


def _logits(hidden: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    with torch.autocast(hidden.device.type, enabled=False):
        return (hidden.to(dtype) @ weight.to(dtype).t()).float()


class _HeadLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        tokens: torch.Tensor,
        chunk: int,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs = hidden.new_empty(len(hidden), dtype=torch.float32)
        entropy = torch.empty_like(logprobs)
        lse = torch.empty_like(logprobs)
        for start in range(0, len(hidden), chunk):
            part = slice(start, start + chunk)
            z = _logits(hidden[part], weight, dtype)
            lse[part] = z.logsumexp(-1)
            log_p = z - lse[part, None]
            logprobs[part] = log_p.gather(-1, tokens[part, None]).squeeze(-1)
            entropy[part] = -(log_p.exp() * log_p).sum(-1)
        ctx.save_for_backward(hidden, weight, tokens, lse, entropy)
        ctx.chunk, ctx.dtype = chunk, dtype
        return logprobs, entropy

    @staticmethod
    def backward(
        ctx: Any, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, tokens, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        for start in range(0, len(hidden), ctx.chunk):
            part = slice(start, start + ctx.chunk)
            h = hidden[part]
            log_p = _logits(h, weight, ctx.dtype) - lse[part, None]
            p = log_p.exp()
            grad_z = torch.zeros_like(p)
            if grad_logprobs is not None:
                g = grad_logprobs[part, None]
                grad_z -= g * p
                grad_z.scatter_add_(-1, tokens[part, None], g)
            if grad_entropy is not None:
                grad_z -= grad_entropy[part, None] * p * (log_p + entropy[part, None])
            with torch.autocast(h.device.type, enabled=False):
                grad_z = grad_z.to(ctx.dtype)
                if grad_hidden is not None:
                    grad_hidden[part] = (grad_z @ weight.to(ctx.dtype)).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (grad_z.t() @ h.to(ctx.dtype)).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def head_logprobs_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    *,
    chunk: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log softmax(W h)[token]`` and ``H(softmax(W h))`` where ``mask`` is set, 0 elsewhere.

    ``hidden`` [N, T, H] (the head's inputs), ``weight`` [V, H] (no bias), ``tokens`` and
    ``mask`` [N, T] -> two fp32 [N, T] tensors, differentiable in ``hidden`` and ``weight``.
    """
    if chunk < 1:
        raise ValueError(f"chunk: must be >= 1, got {chunk}")
    real = mask.bool()
    logprobs = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    entropy = torch.zeros_like(logprobs)
    if real.any():
        dtype = _compute_dtype(hidden.device, weight)
        lp, ent = _HeadLogprobEntropy.apply(hidden[real], weight, tokens[real], chunk, dtype)
        logprobs = logprobs.masked_scatter(real, lp)
        entropy = entropy.masked_scatter(real, ent)
    return logprobs, entropy
