"""The policy update: epochs over minibatches, micro-batches with gradient accumulation,
the loss terms, clipping and the optimizer step.

Per micro-batch: the policy forward (``rl.forward``), entropy-shaped advantages (optional),
the registered policy loss with TIS weights, a KL penalty to a frozen reference, entropy
regularisation and, for GAE, the clipped value loss. Micro-batches add up to the minibatch's
aggregate exactly: weighted by tokens for ``token-mean``, by rows for the sequence modes.
The start every prompt of the step shares runs once before them (``rl.forward.SharedPrefix``)
and takes their summed gradient in one backward after them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel

from calmrl.rl import advantages as adv
from calmrl.rl import losses
from calmrl.rl.batch import Batch
from calmrl.rl.distributed import World
from calmrl.rl.forward import ResponseForward, SharedPrefix, response_logprobs, shared_prefix
from calmrl.rl.reductions import aggregate, masked_mean
from calmrl.rl.sharding import Sharding
from calmrl.rl.value_head import ValueHead
from calmrl.sampling.rollouts import Rollouts


class UpdateSettings(Protocol):
    """What the update reads from the algorithm config (``calmrl.config.AlgorithmConfig``)."""

    loss: str
    agg: str
    epochs: int
    minibatch_size: int | None
    micro_batch_size: int
    entropy_shaping: bool
    shaping_alpha: float
    shaping_kappa: float
    kl_coef: float
    kl_kind: str
    entropy_coef: float
    value_coef: float
    value_clip: float
    share_prompt_forward: bool

    def model_dump(self) -> dict[str, Any]: ...


@dataclass
class PolicyUpdate:
    model: PreTrainedModel
    optimizer: torch.optim.Optimizer
    settings: UpdateSettings
    grad_clip: float
    value_head: ValueHead | None = None
    reference: PreTrainedModel | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    world: World = field(default_factory=World)
    sharding: Sharding | None = None

    def __post_init__(self) -> None:
        if self.sharding is None:
            self.sharding = Sharding(self.model, self.world, enabled=False)

    def __call__(self, batch: Batch, *, seed: int) -> dict[str, float]:
        """Every optimizer step of one RL step; ``{"nonfinite": 1.0}`` if any went non-finite.

        Minibatches are drawn over the rows of all ranks in one canonical order (by row key),
        so a step is the same for any world size; each rank trains on the rows it owns.
        """
        self.model.train()
        # Clip-Cov's random pick of tokens; its own stream, so it cannot correlate with the order.
        loss_generator = torch.Generator(device=batch.rollouts.response_ids.device)
        loss_generator.manual_seed(seed ^ 0x5DEECE66D)
        sums: dict[str, float] = {}
        updates = 0
        for index in self._minibatches(batch, seed):
            step_metrics = self._optimizer_step(batch, index, loss_generator)
            if step_metrics.get("nonfinite"):
                return step_metrics
            for key, value in step_metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            updates += 1
        return {key: value / updates for key, value in sums.items()}

    def _minibatches(self, batch: Batch, seed: int) -> Iterator[torch.Tensor]:
        """Local row indices of each optimizer step, in the global order of the rows."""
        algo = self.settings
        keys = batch.row_keys.cpu()
        real = (keys >= 0).nonzero().flatten()  # a placeholder row (key -1) trains nothing
        ordered = torch.cat(self.world.gather(keys[real])).sort().values  # every rank's rows
        position = torch.searchsorted(ordered, keys[real])  # of each local row in that order
        rows = len(ordered)
        minibatch = algo.minibatch_size or rows
        generator = torch.Generator().manual_seed(seed)
        for _ in range(algo.epochs):
            order = (
                torch.randperm(rows, generator=generator) if algo.epochs > 1 else torch.arange(rows)
            )
            rank_of = torch.full((rows,), -1, dtype=torch.long)
            rank_of[position] = real
            for start in range(0, rows, minibatch):
                members = rank_of[order[start : start + minibatch]]
                yield members[members >= 0]

    def _optimizer_step(
        self, batch: Batch, index: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        """One optimizer step over the local rows ``index`` of a (global) minibatch.

        Each micro-batch's loss is weighted by its share of the global minibatch (tokens for
        ``token-mean``, rows otherwise), so the local gradients add up over ranks to the
        minibatch's gradient: one all-reduce (sum) of the flattened gradients, then clipping
        by the global norm (the same on every rank).
        """
        algo = self.settings
        mask = batch.rollouts.response_mask
        totals = self.world.all_sum(torch.tensor([float(mask[index].sum()), float(len(index))]))
        total_tokens, total_rows = float(totals[0].clamp(min=1)), float(totals[1].clamp(min=1))
        sums: dict[str, float] = {}
        finite = True
        self.optimizer.zero_grad(set_to_none=True)
        micros = [
            index[i : i + algo.micro_batch_size]
            for i in range(0, len(index), algo.micro_batch_size)
        ]
        count = len(micros)
        if self.sharding.enabled:  # sharded forwards are collectives: every rank runs as many
            count = int(self.world.all_max(torch.tensor(float(count))))
        # Autocast keeps its casts of the weights (to bf16) while any autocast region is open:
        # a disabled one around the step keeps them from one forward to the next, so each
        # weight is cast once per step, and the losses and backwards still run outside
        # autocast (the numbers are bitwise those of separate regions). Not under FSDP2: the
        # cache would hold unsharded copies of the weights.
        with self._cast_once():
            step_rows = batch.rollouts.select(index)
            prefix = self._shared_prefix(self.model, step_rows)
            with torch.no_grad():
                reference_prefix = self._shared_prefix(self.reference, step_rows)
            for i in range(count):
                # A rank out of rows runs its first row with weight 0 (FSDP2's lock step).
                micro, weight = (
                    (micros[i], 1.0) if i < len(micros) else (torch.zeros(1).long(), 0.0)
                )
                self.sharding.sync_gradients(i == count - 1)
                loss, metrics = self._micro_loss(batch, micro, generator, prefix, reference_prefix)
                tokens = float(mask[micro].sum())
                share = (
                    tokens / total_tokens if algo.agg == "token-mean" else len(micro) / total_rows
                )
                share *= weight
                # A non-finite loss still runs its backward, so every rank joins the same
                # collectives; the step is then skipped on every rank.
                finite = finite and bool(torch.isfinite(loss))
                (loss * share * self.sharding.loss_scale).backward()
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * share
            if prefix is not None:  # the micro-batches' gradients of the prefix, in one backward
                prefix.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.world.all_max(torch.tensor(float(not finite))).item() != 0.0:
            return {"nonfinite": 1.0}
        if not self.sharding.enabled:  # FSDP2 reduce-scattered them in the last backward
            self._sum_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if not torch.isfinite(grad_norm):
            return {"nonfinite": 1.0}
        self.optimizer.step()
        names = (
            sorted(self.world.gather(sorted(sums))[0]) if self.world.distributed else sorted(sums)
        )
        reduced = self.world.all_sum(torch.tensor([sums.get(k, 0.0) for k in names]))
        return {**dict(zip(names, reduced.tolist(), strict=True)), "grad_norm": float(grad_norm)}

    def _sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Data parallel: one all-reduce of every gradient, flattened into one buffer."""
        if not self.world.distributed:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = self.world.all_sum(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _cast_once(self) -> contextlib.AbstractContextManager:
        if self.sharding.enabled:
            return contextlib.nullcontext()
        return torch.autocast(next(self.model.parameters()).device.type, enabled=False)

    def _shared_prefix(
        self, model: PreTrainedModel | None, rollouts: Rollouts
    ) -> SharedPrefix | None:
        """The prompts' common start, run once for all micro-batches of a step; not under
        FSDP2, whose last micro-batch backward already reduce-scatters the gradients."""
        if model is None or not self.settings.share_prompt_forward or self.sharding.enabled:
            return None
        with self.autocast():
            return shared_prefix(model, rollouts)

    def _micro_loss(
        self,
        batch: Batch,
        micro: torch.Tensor,
        generator: torch.Generator,
        prefix: SharedPrefix | None = None,
        reference_prefix: SharedPrefix | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        algo = self.settings
        rollouts = batch.rollouts.select(micro)
        mask = rollouts.response_mask
        with self.autocast():
            forward = response_logprobs(
                self.model,
                rollouts,
                share_prompts=algo.share_prompt_forward,
                prefix=prefix,
                value_head=self.value_head,
            )
        logprobs, entropy = forward.logprobs, forward.entropy
        advantages = batch.advantages[micro]
        if algo.entropy_shaping:
            advantages = adv.entropy_shaped_advantages(
                advantages,
                entropy.detach(),
                mask,
                alpha=algo.shaping_alpha,
                kappa=algo.shaping_kappa,
            )
        loss, metrics = losses.POLICY_LOSSES.call(
            algo.loss,
            logprobs,
            batch.old_logprobs[micro],
            advantages,
            mask,
            options={**algo.model_dump(), "generator": generator},
            agg=algo.agg,
            tis_weights=batch.loss_weights(micro),
        )
        metrics = {f"actor/{k}": v for k, v in metrics.items()}
        metrics["actor/pg_loss"] = loss.detach()
        metrics["actor/entropy"] = masked_mean(entropy.detach(), mask)
        if self.reference is not None:
            with torch.no_grad(), self.autocast():
                reference = response_logprobs(
                    self.reference,
                    rollouts,
                    share_prompts=algo.share_prompt_forward,
                    prefix=reference_prefix,
                )
            kl = aggregate(
                losses.kl_penalty(logprobs, reference.logprobs, algo.kl_kind), mask, algo.agg
            )
            loss = loss + algo.kl_coef * kl
            metrics["actor/kl_ref"] = kl.detach()
        if algo.entropy_coef > 0:
            loss = loss + losses.entropy_regularization(
                entropy, mask, coef=algo.entropy_coef, agg=algo.agg
            )
        if self.value_head is not None:
            value_loss, value_metrics = losses.value_loss(
                forward.values,
                batch.old_values[micro],
                batch.returns[micro],
                mask,
                clip_range=algo.value_clip,
                agg=algo.agg,
            )
            loss = loss + algo.value_coef * value_loss
            metrics["critic/vf_loss"] = value_loss.detach()
            metrics["critic/vf_clipfrac"] = value_metrics["vf_clipfrac"]
        return loss, metrics

    @torch.no_grad()
    def forward_in_chunks(self, rollouts: Rollouts) -> ResponseForward:
        """pi_old log-probs (and rollout-time values) of a batch, one micro-batch at a time."""
        if len(rollouts) == 0:  # a rank that kept no rows this step
            empty = torch.zeros_like(rollouts.logprobs)
            return ResponseForward(empty, empty, empty if self.value_head is not None else None)
        size = self.settings.micro_batch_size
        prefix = self._shared_prefix(self.model, rollouts)
        with self.autocast(), self.sharding.gathered():
            chunks = [
                response_logprobs(
                    self.model,
                    rollouts.select(torch.arange(i, min(i + size, len(rollouts)))),
                    share_prompts=self.settings.share_prompt_forward,
                    prefix=prefix,
                    value_head=self.value_head,
                )
                for i in range(0, len(rollouts), size)
            ]
        values = [c.values for c in chunks]
        return ResponseForward(
            torch.cat([c.logprobs for c in chunks]),
            torch.cat([c.entropy for c in chunks]),
            torch.cat(values) if self.value_head is not None else None,
        )
