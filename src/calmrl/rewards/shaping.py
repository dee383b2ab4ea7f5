"""Reward shaping terms added to the verifier's reward before advantages are computed."""

from __future__ import annotations

import torch


def overlong_penalty(
    response_lengths: torch.Tensor,
    *,
    max_response_length: int,
    buffer_length: int,
    penalty_factor: float = 1.0,
) -> torch.Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025), a reward term to add to ``R``.

    With ``L_max = max_response_length`` and ``L_cache = buffer_length``::

        p(L) = 0                                              if L <= L_max - L_cache
             = -penalty_factor * (L - (L_max - L_cache)) / L_cache   if L_max - L_cache < L <= L_max
             = -penalty_factor                                 if L > L_max

    This equals veRL's DAPO reward manager (``reward_model.overlong_buffer``) for every length
    a rollout can have (``L <= L_max``); beyond ``L_max`` it stays at the paper's floor.

    Args:
        response_lengths: ``[N]`` number of generated tokens per sequence.
        max_response_length: ``L_max``.
        buffer_length: ``L_cache``, the soft band before ``L_max`` (``0 < L_cache <= L_max``).
        penalty_factor: the penalty at ``L_max``.

    Returns:
        ``[N]`` float penalties in ``[-penalty_factor, 0]``.
    """
    if not 0 < buffer_length <= max_response_length:
        raise ValueError(
            f"buffer_length must be in (0, max_response_length={max_response_length}], "
            f"got {buffer_length}"
        )
    expected = max_response_length - buffer_length
    exceed = response_lengths.float() - expected
    return (-exceed / buffer_length * penalty_factor).clamp(min=-penalty_factor, max=0.0)


def shaped_rewards(
    scores: list[float],
    response_lengths: torch.Tensor,
    *,
    max_response_length: int,
    overlong_buffer: int = 0,
    penalty_factor: float = 1.0,
) -> torch.Tensor:
    """The verifier's scores as a tensor, plus the overlong penalty when ``overlong_buffer``."""
    rewards = torch.tensor(scores, dtype=torch.float32)
    if overlong_buffer:
        rewards += overlong_penalty(
            response_lengths,
            max_response_length=max_response_length,
            buffer_length=overlong_buffer,
            penalty_factor=penalty_factor,
        )
    return rewards
