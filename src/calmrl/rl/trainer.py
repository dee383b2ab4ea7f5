"""The RLVR loop, top to bottom: rollout -> reward -> advantage -> update -> schedule step.

One step ``s``:
1. sample ``prompts_per_step`` problems and ``G = rollout.n`` rollouts each from the engine,
   with the configured method (EAD's decay grows with ``s``); the engine records behaviour
   log-probs and pi_old log-probs (tau = 1) for free;
2. score them with the verifier; DAPO dynamic sampling drops all-equal groups and refills;
3. advantages: group-relative (GRPO / Dr. GRPO / RLOO) broadcast to tokens, or GAE from a
   value head on the policy's trunk (PPO);
4. policy updates over epochs and minibatches: PPO clipped loss (clip-higher, dual-clip),
   TIS weights from behaviour log-probs, optional entropy shaping, KL to a frozen reference,
   entropy regularisation, Clip-Cov / KL-Cov, the clipped value loss (GAE); AdamW with
   warm-up and gradient clipping;
5. log, evaluate every ``eval_every`` steps, checkpoint every ``save_every`` steps.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from calmrl.analysis.entropy import mean_by_position_band
from calmrl.config import Config
from calmrl.data import Problem, few_shot_examples, load_problems
from calmrl.data.prompts import MATH_SUFFIX, format_prompt
from calmrl.eval.runner import EvalResult, evaluate
from calmrl.io import atomic_open, write_json
from calmrl.models import load_model
from calmrl.rewards import get_reward
from calmrl.rl import advantages as adv
from calmrl.rl import losses
from calmrl.rl.checkpoint import (
    list_checkpoints,
    load_trainer_state,
    save_checkpoint,
    set_rng_state,
)
from calmrl.rl.run_logger import RunLogger
from calmrl.rl.value_head import ValueHead
from calmrl.sampling import Rollouts, generate
from calmrl.sampling.engine import NonFiniteLogitsError
from calmrl.sampling.methods import make_sampler

RUN_ARTIFACTS = ("metrics.jsonl", "checkpoints", "evals", "final", "tensorboard", "plots")


class TrainingAborted(RuntimeError):
    """Too many consecutive steps with a non-finite loss, gradient or logits."""


@dataclass
class PromptStream:
    """Deterministic, resumable order over the training problems: a fresh permutation each epoch."""

    problems: list[Problem]
    seed: int
    cursor: int = 0
    _orders: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def take(self, count: int) -> list[Problem]:
        out = []
        for _ in range(count):
            epoch, index = divmod(self.cursor, len(self.problems))
            out.append(self.problems[int(self._order(epoch)[index])])
            self.cursor += 1
        return out

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:  # derived from (seed, epoch): nothing to checkpoint
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(len(self.problems), generator=generator)}
        return self._orders[epoch]


@dataclass
class Batch:
    """One step's training data, on the model's device."""

    rollouts: Rollouts
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N, T]
    old_logprobs: torch.Tensor  # [N, T]
    tis_weights: torch.Tensor | None  # [N, T]
    metrics: dict[str, float] = field(default_factory=dict)
    old_values: torch.Tensor | None = None  # [N, T], GAE only
    returns: torch.Tensor | None = None  # [N, T], GAE only


# ---------------------------------------------------------------------------------------------
# Model pieces


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
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    groups, row_to_group = torch.unique(rollouts.group_index, return_inverse=True)
    hidden = None
    if not share_prompts or len(groups) == len(rollouts) or _checkpointing(model):
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
    return ResponseForward(logprobs, losses.entropy_from_logits(logits), values)


@contextlib.contextmanager
def _output_projection_inputs(model: PreTrainedModel, enabled: bool):
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


def _checkpointing(model: PreTrainedModel) -> bool:
    """Activation checkpointing disables the KV cache, so prompt sharing cannot be used."""
    # transformers 5 names it is_activation_checkpointing; peft models forward the attribute.
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        with contextlib.suppress(AttributeError):
            return bool(getattr(model, name))
    return False


# ---------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    def __init__(
        self,
        config: Config,
        *,
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        resume: bool = False,
        console: Any = None,
    ):
        self.config = config
        self.run_dir = Path(config.train.output_dir)
        self.console = console
        cfg = config
        # Everything that bad input can break is checked before the model loads.
        data = cfg.data
        fields = {"question_field": data.question_field, "answer_field": data.answer_field}
        self.train_problems = _as_config_error(
            "data.train",
            load_problems,
            data.train,
            limit=data.train_limit,
            seed=cfg.train.seed,
            **fields,
        )
        self.eval_problems = []
        if data.eval and cfg.train.eval_every > 0:
            self.eval_problems = _as_config_error(
                "data.eval",
                load_problems,
                data.eval,
                limit=data.eval_limit,
                seed=data.eval_seed,
                **fields,
            )
        self.shots = (
            _as_config_error("data.few_shot", few_shot_examples, data.few_shot)
            if data.few_shot
            else ()
        )
        self.reward_fn = _as_config_error(
            "reward", get_reward, cfg.reward.name, **cfg.reward.params
        )
        if not resume:
            self._claim_run_dir()

        torch.manual_seed(cfg.train.seed)
        if model is None:
            dtype = getattr(torch, cfg.model.dtype)
            model, tokenizer = load_model(cfg.model.name, dtype=dtype, device=cfg.model.device)
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        if cfg.model.gradient_checkpointing:
            # transformers 5 renamed it; older versions only have the gradient_ name.
            enable = getattr(model, "activation_checkpointing_enable", None)
            (enable or model.gradient_checkpointing_enable)()
        if cfg.model.lora_rank > 0:
            self.model = _with_lora(model, cfg.model.lora_rank, cfg.model.lora_alpha)
        self.value_head = (
            ValueHead.for_model(self.model) if cfg.algorithm.advantage == "gae" else None
        )
        self.reference = None
        if cfg.algorithm.kl_coef > 0:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.sampler = make_sampler(
            cfg.rollout.method,
            cfg.rollout.params,
            model=self.model,
            top_k=cfg.rollout.top_k,
            top_p=cfg.rollout.top_p,
            min_p=cfg.rollout.min_p,
        )
        self.eval_sampler = make_sampler(cfg.train.eval_method, cfg.train.eval_params, model=model)

        param_groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        if self.value_head is not None:
            param_groups.append({"params": self.value_head.parameters(), "lr": cfg.optim.value_lr})
        self.optimizer = torch.optim.AdamW(
            param_groups,
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            weight_decay=cfg.optim.weight_decay,
        )
        warmup = cfg.optim.warmup_steps
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.stream = PromptStream(self.train_problems, seed=cfg.train.seed)
        self.step = 0
        self.bad_steps = 0
        if resume:
            self._restore()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.run_dir / "config.yaml") as handle:
            handle.write(cfg.to_yaml())
        self.logger = RunLogger(
            self.run_dir,
            resume_step=self.step if resume else None,
            tensorboard=cfg.train.tensorboard,
            wandb_project=cfg.train.wandb_project,
            config=cfg.model_dump(mode="json"),
        )

    # -- the loop -------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        cfg = self.config.train
        history: dict[str, Any] = {}
        if cfg.eval_every and self.step == 0:
            with self._status("evaluating before training"):
                history["before"] = self.run_eval()
            self.logger.log(0, history["before"].flat_metrics(prefix="eval/"))
        while self.step < cfg.steps:
            started = time.perf_counter()
            with self._status(f"step {self.step + 1}/{cfg.steps}: rollouts, rewards, update"):
                metrics = self.train_step()
            self.step += 1
            metrics["time/step"] = time.perf_counter() - started
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                with self._status(f"evaluating at step {self.step}"):
                    metrics.update(self.run_eval().flat_metrics(prefix="eval/"))
            self.logger.log(self.step, metrics)
            self._report(metrics)
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save()
        if cfg.eval_every:
            history["after"] = self.last_eval
        self.save_final()
        self.logger.close()
        return history

    def train_step(self) -> dict[str, float]:
        """One RL step; a step whose logits, loss or gradients are not finite is skipped."""
        timings: dict[str, float] = {}
        batch = None
        try:
            batch = self.collect(timings)
            started = time.perf_counter()
            metrics = self.update(batch) if batch is not None else {"skipped_no_signal": 1.0}
            timings["time/update"] = time.perf_counter() - started
        except NonFiniteLogitsError:
            metrics = {"nonfinite": 1.0}
        if metrics.get("nonfinite"):
            self.bad_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.bad_steps >= self.config.train.max_bad_steps:
                raise TrainingAborted(
                    f"train.max_bad_steps: {self.bad_steps} consecutive steps had a non-finite "
                    "loss, gradient or logits; lower optim.lr or check the data"
                )
        else:
            self.bad_steps = 0
        if batch is not None:
            metrics.update(batch.metrics)
            metrics.update(_throughput(batch, timings))
        return {**metrics, **timings, "lr": self.lr_schedule.get_last_lr()[0]}

    # -- 1-3: rollouts, rewards, advantages -----------------------------------------------------

    def prompts_for(self, problems: list[Problem]) -> list[str]:
        suffix = MATH_SUFFIX if self.config.data.math_suffix else None
        return [
            format_prompt(
                self.tokenizer,
                p.question,
                system=self.config.data.system,
                suffix=suffix,
                few_shot=self.shots,
            )
            for p in problems
        ]

    def collect(self, timings: dict[str, float]) -> Batch | None:
        cfg, algo = self.config.rollout, self.config.algorithm
        kept: list[Rollouts] = []
        kept_rewards: list[torch.Tensor] = []
        stats: dict[str, float] = {"time/rollout": 0.0, "time/reward": 0.0}
        all_rewards, all_rollouts = [], []
        for attempt in range(1 + (algo.max_refills if algo.dynamic_sampling else 0)):
            missing = cfg.prompts_per_step - sum(len(r) // cfg.n for r in kept)
            if missing <= 0:
                break
            problems = self.stream.take(missing)
            started = time.perf_counter()
            self.model.eval()
            with self._autocast():
                rollouts = generate(
                    self.model,
                    self.tokenizer,
                    self.prompts_for(problems),
                    self.sampler,
                    n=cfg.n,
                    max_new_tokens=cfg.max_new_tokens,
                    step=self.step,
                    seed=self._seed(attempt),
                    stop=cfg.stop,
                    batch_size=cfg.batch_size,
                )
            stats["time/rollout"] += time.perf_counter() - started
            started = time.perf_counter()
            golds = [problems[g].answer for g in rollouts.group_index.tolist()]
            scores = self.reward_fn(rollouts.texts, golds)
            rewards = torch.tensor(scores, dtype=torch.float32)
            if algo.overlong_buffer:
                rewards += adv.overlong_penalty(
                    rollouts.response_lengths.cpu(),
                    max_response_length=cfg.max_new_tokens,
                    buffer_length=algo.overlong_buffer,
                    penalty_factor=algo.overlong_penalty,
                )
            stats["time/reward"] += time.perf_counter() - started
            all_rewards.append(rewards)
            all_rollouts.append(rollouts)
            keep_groups = (
                adv.dapo_group_filter(rewards, rollouts.group_index.cpu())
                if algo.dynamic_sampling
                else torch.ones(len(problems), dtype=torch.bool)
            )
            rows = keep_groups[rollouts.group_index.cpu()].nonzero().flatten()
            if len(rows):
                kept.append(
                    _regroup(rollouts.select(rows), offset=sum(len(r) // cfg.n for r in kept))
                )
                kept_rewards.append(rewards[rows])
        timings.update(stats)
        sampled = Rollouts.concat(all_rollouts, self.tokenizer.pad_token_id)
        sampled_rewards = torch.cat(all_rewards)
        metrics = self._rollout_metrics(sampled, sampled_rewards)
        if not kept:
            return Batch(sampled, sampled_rewards, torch.empty(0), torch.empty(0), None, metrics)
        rollouts = Rollouts.concat(kept, self.tokenizer.pad_token_id).to(self.device)
        rewards = torch.cat(kept_rewards).to(self.device)
        metrics["rows_trained"] = float(len(rollouts))
        return self._with_advantages(rollouts, rewards, metrics)

    def _with_advantages(self, rollouts: Rollouts, rewards: torch.Tensor, metrics) -> Batch:
        algo = self.config.algorithm
        mask = rollouts.response_mask
        old_logprobs, old_values = rollouts.logprobs, None
        # One no-grad pass over the batch when pi_old is recomputed or GAE needs V_old.
        if algo.recompute_old_logprobs or self.value_head is not None:
            forward = self._forward_in_chunks(rollouts)
            old_values = forward.values
            if algo.recompute_old_logprobs:
                old_logprobs = forward.logprobs
                metrics["old_logprob_abs_diff_max"] = float(
                    ((old_logprobs - rollouts.logprobs).abs() * mask).max()
                )
        token_adv, returns = self._advantages(rollouts, rewards, old_values)
        if returns is not None:
            metrics.update(_critic_metrics(old_values, returns, mask))
        weights = None
        if algo.tis:
            weights, diagnostics = losses.tis_weights(
                old_logprobs,
                rollouts.behaviour_logprobs,
                mask,
                cap=algo.tis_cap,
                level=algo.tis_level,
                mode=algo.tis_mode,
            )
            metrics.update(
                {f"tis/{k.removeprefix('tis_')}": float(v) for k, v in diagnostics.items()}
            )
        return Batch(
            rollouts, rewards, token_adv, old_logprobs, weights, metrics, old_values, returns
        )

    def _advantages(
        self, rollouts: Rollouts, rewards: torch.Tensor, values: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token advantages ``[N, T]``, and the value targets (returns) for GAE."""
        algo, mask = self.config.algorithm, rollouts.response_mask
        if algo.advantage == "gae":
            return adv.gae_advantages(
                adv.outcome_token_rewards(rewards, mask),
                values,
                mask,
                gamma=algo.gamma,
                lam=algo.lam,
                whiten=bool(mask.sum() >= 2),
            )
        if algo.advantage == "rloo":
            sequence_adv = adv.rloo_advantages(rewards, rollouts.group_index)
        else:
            sequence_adv = adv.grpo_advantages(
                rewards,
                rollouts.group_index,
                norm_by_std=algo.advantage == "grpo",
                eps=algo.norm_eps,
            )
        return adv.broadcast_to_tokens(sequence_adv, mask), None

    # -- 4: policy update -----------------------------------------------------------------------

    def update(self, batch: Batch) -> dict[str, float]:
        algo = self.config.algorithm
        if batch.advantages.numel() == 0:
            return {"skipped_no_signal": 1.0}
        self.model.train()
        rows = len(batch.rollouts)
        minibatch = algo.minibatch_size or rows
        sums: dict[str, float] = {}
        updates = 0
        generator = torch.Generator().manual_seed(self._seed(0))
        for _ in range(algo.epochs):
            order = (
                torch.randperm(rows, generator=generator) if algo.epochs > 1 else torch.arange(rows)
            )
            for start in range(0, rows, minibatch):
                index = order[start : start + minibatch]
                step_metrics = self._optimizer_step(batch, index)
                if step_metrics.get("nonfinite"):
                    return step_metrics
                for key, value in step_metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                updates += 1
        self.lr_schedule.step()
        return {key: value / updates for key, value in sums.items()}

    def _optimizer_step(self, batch: Batch, index: torch.Tensor) -> dict[str, float]:
        algo = self.config.algorithm
        mask_all = batch.rollouts.response_mask[index]
        total_tokens = float(mask_all.sum().clamp(min=1))
        sums: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for start in range(0, len(index), algo.micro_batch_size):
            micro = index[start : start + algo.micro_batch_size]
            loss, metrics = self._micro_loss(batch, micro)
            # Micro-batches add up to the minibatch's aggregate: by tokens for token-mean,
            # by rows for the sequence-mean modes.
            mask = batch.rollouts.response_mask[micro]
            share = (
                float(mask.sum()) / total_tokens
                if algo.agg == "token-mean"
                else len(micro) / len(index)
            )
            if not torch.isfinite(loss):
                return {"nonfinite": 1.0}
            (loss * share).backward()
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value) * share
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.optim.grad_clip)
        if not torch.isfinite(grad_norm):
            return {"nonfinite": 1.0}
        self.optimizer.step()
        return {**sums, "grad_norm": float(grad_norm)}

    def _micro_loss(self, batch: Batch, micro: torch.Tensor) -> tuple[torch.Tensor, dict]:
        algo = self.config.algorithm
        rollouts = batch.rollouts.select(micro)
        mask = rollouts.response_mask
        with self._autocast():
            forward = response_logprobs(self.model, rollouts, value_head=self.value_head)
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
        weights = batch.tis_weights[micro] if batch.tis_weights is not None else None
        old = batch.old_logprobs[micro]
        common = {"agg": algo.agg, "tis_weights": weights}
        if algo.loss == "clip_cov":
            loss, metrics = losses.clip_cov_policy_loss(
                logprobs,
                old,
                advantages,
                mask,
                clip_low=algo.clip_low,
                clip_high=algo.clip_high,
                generator=torch.Generator(device=self.device).manual_seed(self._seed(1)),
                **common,
            )
        elif algo.loss == "kl_cov":
            loss, metrics = losses.kl_cov_policy_loss(logprobs, old, advantages, mask, **common)
        else:
            loss, metrics = losses.policy_loss(
                logprobs,
                old,
                advantages,
                mask,
                clip_low=algo.clip_low,
                clip_high=algo.clip_high,
                clip_ratio_c=algo.clip_ratio_c,
                **common,
            )
        metrics = {f"actor/{k}": v for k, v in metrics.items()}
        metrics["actor/pg_loss"] = loss.detach()
        metrics["actor/entropy"] = losses.masked_mean(entropy.detach(), mask)
        if self.reference is not None:
            with torch.no_grad(), self._autocast():
                ref_logprobs = response_logprobs(self.reference, rollouts).logprobs
            kl = losses.aggregate(
                losses.kl_penalty(logprobs, ref_logprobs, algo.kl_kind), mask, algo.agg
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
    def _forward_in_chunks(self, rollouts: Rollouts) -> ResponseForward:
        """pi_old log-probs (and rollout-time values) of a batch, one micro-batch at a time."""
        size = self.config.algorithm.micro_batch_size
        with self._autocast():
            chunks = [
                response_logprobs(
                    self.model,
                    rollouts.select(torch.arange(i, min(i + size, len(rollouts)))),
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

    # -- metrics, evaluation --------------------------------------------------------------------

    def _rollout_metrics(self, rollouts: Rollouts, rewards: torch.Tensor) -> dict[str, Any]:
        mask = rollouts.response_mask
        on = mask.bool()
        # Accuracy is the share of positive rewards: exact for the 1/0 and +1/-1 schemes; a
        # format bonus on wrong answers would inflate it (the held-out eval uses the verifier).
        correct = (rewards > 0).float()
        metrics: dict[str, Any] = {
            "reward/mean": float(rewards.mean()),
            "reward/accuracy": float(correct.mean()),
            "response/length_mean": float(rollouts.response_lengths.float().mean()),
            "response/clip_ratio": float(
                sum(r == "length" for r in rollouts.finish_reasons) / max(1, len(rollouts))
            ),
            "rollout/entropy_mean": float(rollouts.entropies[on].mean()) if on.any() else 0.0,
            "rollout/temperature_mean": float(rollouts.temperatures[on].mean())
            if on.any()
            else 0.0,
            "rollout/temperature_min": float(rollouts.temperatures[on].min()) if on.any() else 0.0,
            "rollout/tokens": float(mask.sum()),
        }
        for band, value in mean_by_position_band(rollouts.entropies, mask).items():
            metrics[f"entropy_by_position/{band}"] = value
        return metrics

    def run_eval(self) -> EvalResult:
        cfg = self.config
        self.model.eval()
        with self._autocast():
            result = evaluate(
                self.model,
                self.tokenizer,
                self.eval_problems,
                self.eval_sampler,
                prompts=self.prompts_for(self.eval_problems),
                reward_fn=self.reward_fn,
                n=cfg.train.eval_n,
                ks=cfg.train.eval_k,
                max_new_tokens=cfg.rollout.max_new_tokens,
                seed=cfg.data.eval_seed,
                batch_size=cfg.rollout.batch_size,
            )
        self.last_eval = result
        write_json(self.run_dir / "evals" / f"step-{self.step:06d}.json", result.to_dict())
        return result

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.config.model.autocast
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, dtype))

    def _status(self, message: str) -> contextlib.AbstractContextManager:
        """A live spinner on the console (nothing without one)."""
        return self.console.status(message) if self.console else contextlib.nullcontext()

    def _report(self, metrics: dict[str, Any]) -> None:
        if self.console is None:
            return
        shown = {
            "reward/mean": "reward",
            "reward/accuracy": "acc",
            "response/length_mean": "len",
            "tis/mean": "tis_w",
            "actor/entropy": "entropy",
            "time/step": "s/step",
        }
        parts = [f"step {self.step}/{self.config.train.steps}"]
        parts += [f"{label} {metrics[key]:.3f}" for key, label in shown.items() if key in metrics]
        parts += [
            f"{key.removeprefix('eval/')} {value:.3f}"
            for key, value in metrics.items()
            if key.startswith(("eval/pass@", "eval/worst@"))
        ]
        self.console.print("  ".join(parts), soft_wrap=True)

    # -- checkpoints ----------------------------------------------------------------------------

    def _seed(self, salt: int) -> int:
        return (self.config.train.seed * 1_000_003 + self.step * 7_919 + salt) % 2**62

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "cursor": self.stream.cursor,
            "bad_steps": self.bad_steps,
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "value_head": self.value_head.state_dict() if self.value_head is not None else None,
        }

    def save(self) -> Path:
        return save_checkpoint(
            self.run_dir,
            self.step,
            self.model,
            self.tokenizer,
            self.trainer_state(),
            keep=self.config.train.keep_checkpoints,
        )

    def save_final(self) -> None:
        model = (
            self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
        )
        staging = self.run_dir / ".tmp-final"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging, safe_serialization=True)
        self.tokenizer.save_pretrained(staging)
        if self.value_head is not None:
            save_file(self.value_head.state_dict(), str(staging / "value_head.safetensors"))
        final = self.run_dir / "final"
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)

    def _claim_run_dir(self) -> None:
        """A fresh run must not mix its metrics and checkpoints with an earlier one's."""
        artifacts = [self.run_dir / name for name in RUN_ARTIFACTS]
        if not any(path.exists() for path in artifacts):
            return
        if not self.config.train.overwrite:
            raise ValueError(
                f"train.output_dir: {self.run_dir} already holds a run; continue it with "
                f"--resume {self.run_dir}, pick another output_dir, or set train.overwrite=true"
            )
        for path in artifacts:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _restore(self) -> None:
        checkpoints = list_checkpoints(self.run_dir)
        if not checkpoints:
            raise FileNotFoundError(
                f"--resume: no complete checkpoint under {self.run_dir}/checkpoints"
            )
        latest = checkpoints[-1]
        weights: dict[str, torch.Tensor] = {}
        for shard in sorted((latest / "model").glob("*.safetensors")):
            weights.update(load_file(shard, device=str(self.device)))
        if hasattr(self.model, "peft_config"):
            # A LoRA checkpoint holds the adapters only (peft's format); the base comes from
            # model.name, as in the run that wrote it.
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.model, weights)
            missing = [k for k in result.missing_keys if "lora_" in k]
            unexpected = result.unexpected_keys
        else:
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
            missing = [k for k in missing if k not in _tied_keys(self.model)]
        if missing or unexpected:
            raise ValueError(
                f"--resume: checkpoint {latest} does not match the model "
                f"(missing {missing[:2]}, unexpected {unexpected[:2]}); resume with the same "
                "model.name and model.lora_rank"
            )
        state = load_trainer_state(latest)
        if self.value_head is not None:
            if state.get("value_head") is None:
                raise ValueError(f"--resume: checkpoint {latest} has no value head (advantage=gae)")
            self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.step, self.stream.cursor, self.bad_steps = (
            state["step"],
            state["cursor"],
            state["bad_steps"],
        )
        set_rng_state(state["rng"])


def _as_config_error(key: str, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``build``; a bad-input error is re-raised as one line naming the config key."""
    try:
        return build(*args, **kwargs)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise ValueError(f"{key}: {error}") from None


def _throughput(batch: Batch, timings: dict[str, float]) -> dict[str, float]:
    """Tokens per second of the rollout (all sampled tokens) and of the update (trained ones)."""
    out = {}
    if timings.get("time/rollout"):
        out["perf/rollout_tokens_per_s"] = batch.metrics["rollout/tokens"] / timings["time/rollout"]
    if timings.get("time/update") and batch.advantages.numel():
        trained = float(batch.rollouts.response_mask.sum())
        out["perf/update_tokens_per_s"] = trained / timings["time/update"]
    return out


def _critic_metrics(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Rollout-time value statistics; explained variance ``1 - Var(R - V) / Var(R)`` as veRL."""
    on = mask.bool()
    v, r = values[on], returns[on]
    variance = float(r.var()) if len(r) > 1 else 0.0
    explained = 1.0 - float((r - v).var()) / variance if variance > 0 else 0.0
    return {
        "critic/values_mean": float(v.mean()) if len(v) else 0.0,
        "critic/returns_mean": float(r.mean()) if len(r) else 0.0,
        "critic/explained_var": explained,
    }


def _tied_keys(model: PreTrainedModel) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or []
    return set(tied if isinstance(tied, list) else tied.keys())


def _regroup(rollouts: Rollouts, offset: int) -> Rollouts:
    """Renumber group indices 0..k-1 (plus offset) after some groups were dropped."""
    _, dense = torch.unique(rollouts.group_index, sorted=True, return_inverse=True)
    rollouts.group_index = dense + offset
    return rollouts


def _with_lora(model: PreTrainedModel, rank: int, alpha: float) -> PreTrainedModel:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("model.lora_rank: LoRA needs peft; pip install 'calmrl[lora]'") from None
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def run_training(config: Config, *, resume: bool = False, console: Any = None) -> dict[str, Any]:
    """Build a trainer from a config and train; returns the before/after evaluations."""
    return Trainer(config, resume=resume, console=console).train()
