"""LED — Latent Exploration Decoding, as a ``TokenSampler`` for the rollout engine.

Tan et al., "Restoring Exploration after Post-Training: Latent Exploration Decoding for Large
Reasoning Models" (arXiv 2602.01698, ICML 2026); semantics follow the authors' code
(github.com/AlbertTan404/LED, ``led/decoding.py`` and the patched SGLang models). After RL
post-training the final layer's posterior has collapsed (low entropy) while intermediate layers
stay uncertain; LED sometimes samples from an aggregate of intermediate posteriors instead.

One decode step, for a model with ``n`` layers, depth ``d``, ``k`` candidates, temperature ``T``
(``docs/algorithms.md``, "LED"). Depth index 0 is the final layer; index ``j >= 1`` is the
residual stream entering layer ``n-1-j`` (the one entering the last layer, ``n-1``, is
skipped by default):

    P_j       = softmax(lm_head(h_j) / T)                       [R, d, V]
    cand      = top-k tokens of P_0                               [R, k]
    Q_j       = P_j[cand].clamp_min(1e-6)                         [R, d, k]
    C_j       = normalise(Q_0 + ... + Q_j)                        (cumulative from the final layer)
    j*        = argmax_j H(C_j)                                   (ties: the smallest j)
    p_explore = 1 - max P_0                                       (``exploit=False``: 1)
    behaviour = p_explore * C_j* + (1 - p_explore) * normalise(P_0[cand])   on cand, 0 elsewhere

The authors draw a coin with probability ``p_explore``, then a token from the chosen branch; we
return the mixture itself, so the engine samples the same law and records the exact behaviour
log-prob that truncated importance sampling needs (the authors' code records the final
layer's log-prob at ``T`` instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from calmrl.models.lens import LogitLens

# The authors' eps: every candidate keeps a little mass in every layer before the cumulative sum.
PROB_FLOOR = 1e-6


def depth_posterior(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LED's depth selection. ``q`` [R, d, k]: candidate probs per depth, index 0 the final layer.

    Returns the max-entropy cumulative posterior ``C_j*`` [R, k] and ``j*`` [R]
    (``led/decoding.py`` lines 61, 72-77).
    """
    cumulative = q.clamp_min(PROB_FLOOR).cumsum(dim=1)
    cumulative = cumulative / cumulative.sum(dim=-1, keepdim=True)
    # The floor keeps every entry > 0, so the log is finite (the authors' 1e-9 clamp never bites).
    entropy = -(cumulative * cumulative.log()).sum(dim=-1)  # [R, d]
    depth = entropy.argmax(dim=-1)  # first maximum on ties
    index = depth.view(-1, 1, 1).expand(-1, 1, q.shape[-1])
    return cumulative.gather(1, index).squeeze(1), depth


def _one_hot_argmax(probs: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(probs).scatter_(-1, probs.argmax(dim=-1, keepdim=True), 1.0)


@dataclass
class LEDSampler:
    """Latent exploration decoding; build it with ``LEDSampler.for_model(model, ...)``.

    - ``depth`` d: posteriors aggregated, the final layer included (2 <= d <= layers).
    - ``top_k`` k: candidates, the final layer's top-k.
    - ``temperature`` T: applied to every layer before the softmax.
    - ``ln``: apply the final norm to intermediate states before ``lm_head`` (authors: off).
    - ``include_penultimate``: use the states entering layers n-d+1 .. n-1 instead of the
      authors' n-d .. n-2 (their loop stops at ``i < n_layers - 1``).
    - ``exploit``: explore with probability ``1 - p_top1`` (authors' ``do_exploit=1``); False
      always explores.
    - ``think_only``: explore only until the row has emitted ``end_think_token_id`` (the
      ``</think>`` token itself is still drawn with exploration, as in the authors' code).
    - ``greedy``: the authors' greedy mode: posteriors at T=1 (``temperature`` unused), each
      branch takes its argmax; the explore coin stays random, so the result is a two-point law.
    """

    lens: LogitLens
    num_layers: int
    depth: int = 8
    top_k: int = 8
    temperature: float = 0.6
    ln: bool = False
    include_penultimate: bool = False
    exploit: bool = True
    think_only: bool = False
    end_think_token_id: int | None = None
    greedy: bool = False
    needs_hidden_states: bool = field(default=True, init=False)
    _thinking: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 2 <= self.depth <= self.num_layers:
            raise ValueError(
                f"depth: must be in [2, {self.num_layers}] (the model's layers), got {self.depth}"
            )
        if not 1 <= self.top_k <= self.lens.vocab_size:
            raise ValueError(
                f"top_k: must be in [1, {self.lens.vocab_size}] (the vocabulary), got {self.top_k}"
            )
        if not self.temperature > 0.0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if self.think_only and self.end_think_token_id is None:
            raise ValueError(
                "end_think_token_id: required with think_only=True, e.g. "
                "tokenizer.convert_tokens_to_ids('</think>')"
            )
        if self.ln and self.lens.final_norm is None:
            raise ValueError("ln: this model has no final norm module that calmrl can find")

    @classmethod
    def for_model(cls, model: PreTrainedModel, **options: Any) -> LEDSampler:
        """LED over any HF decoder-only model; ``options`` are the fields above."""
        config = model.config.get_text_config()
        return cls(LogitLens.of(model), config.num_hidden_layers, **options)

    @property
    def layer_indices(self) -> tuple[int, ...]:
        """Indices into HF ``hidden_states`` (i = entering layer i) of depths 1 .. d-1."""
        deepest = self.num_layers - (1 if self.include_penultimate else 2)
        return tuple(range(deepest, deepest - (self.depth - 1), -1))

    def reset(self, batch_size: int, device: torch.device) -> None:
        self._thinking = torch.ones(batch_size, dtype=torch.bool, device=device)

    def update(self, tokens: torch.Tensor, rows: torch.Tensor, entropies: torch.Tensor) -> None:
        if self.think_only:
            self._thinking[rows] &= tokens != self.end_think_token_id

    def behaviour_log_probs(
        self,
        logits: torch.Tensor,
        positions: torch.Tensor,
        step: int,
        hidden_states: tuple[torch.Tensor, ...] | None,
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log of the LED mixture over the vocabulary (-inf off the candidates), and T per row."""
        if hidden_states is None:
            raise ValueError("hidden_states: LED reads intermediate layers; none were given")
        tau = 1.0 if self.greedy else self.temperature
        final_probs = (logits.float() / tau).softmax(dim=-1)
        top_probs, candidates = final_probs.topk(self.top_k, dim=-1)  # sorted: top-1 first
        p_explore = self._explore_probability(top_probs[:, 0], rows)
        if self.greedy:
            mix = torch.zeros_like(top_probs)
            mix[:, 0] = 1.0
        else:
            mix = top_probs / top_probs.sum(dim=-1, keepdim=True)

        # Rows that cannot explore (gate closed, or p_top1 == 1) skip the intermediate layers.
        live = (p_explore > 0).nonzero().flatten()
        if len(live) > 0:
            states = torch.stack([hidden_states[i][live] for i in self.layer_indices], dim=1)
            explore = self._explore_distribution(states, top_probs[live], candidates[live], tau)
            weight = p_explore[live, None]
            mix[live] = weight * explore + (1 - weight) * mix[live]

        log_probs = torch.full_like(final_probs, float("-inf"))
        log_probs.scatter_(-1, candidates, mix.log())
        return log_probs, torch.full_like(p_explore, tau)

    def _explore_probability(self, top1: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        p = 1.0 - top1 if self.exploit else torch.ones_like(top1)
        if self.think_only:
            if self._thinking is None:
                raise RuntimeError("reset(batch_size, device) must be called before sampling")
            p = p * self._thinking[rows]
        return p

    def _explore_distribution(
        self,
        states: torch.Tensor,
        final_top: torch.Tensor,
        candidates: torch.Tensor,
        tau: float,
    ) -> torch.Tensor:
        """``C_j*`` over the candidates (one-hot at its argmax if greedy); states [L, d-1, H]."""
        layer_logits = self.lens(states, norm=self.ln).div_(tau)  # one projection: [L, d-1, V]
        index = candidates[:, None, :].expand(-1, layer_logits.shape[1], -1)
        # log_softmax is one fused kernel; logsumexp was 4x slower on 2 CPU threads here.
        q = layer_logits.log_softmax(dim=-1).gather(-1, index).exp()
        posterior, _ = depth_posterior(torch.cat([final_top[:, None], q], dim=1))
        return _one_hot_argmax(posterior) if self.greedy else posterior
