"""The RLVR loop, top to bottom: rollout -> reward -> advantage -> update -> schedule step.

One step ``s`` (``Trainer.train_step``):
1. **rollout**: ``prompts_per_step`` problems, ``G = rollout.n`` rollouts each, from the
   rollout backend with the configured method (EAD's decay grows with ``s``); the backend
   records behaviour log-probs and pi_old log-probs (tau = 1) for free;
2. **reward**: the verifier scores them (plus DAPO's overlong shaping); DAPO dynamic sampling
   drops all-equal groups and refills from new problems;
3. **advantage**: the registered estimator (GRPO / Dr. GRPO / RLOO, or GAE from a value head),
   pi_old and TIS weights (``rl.batch``);
4. **update**: the registered policy loss over epochs, minibatches and micro-batches
   (``rl.update``), then the backend is given the new weights;
5. **schedule step**: the learning rate, and the step counter the EAD decay reads;
then log, evaluate every ``eval_every`` steps, checkpoint every ``save_every`` steps.
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from calmrl.config import Config
from calmrl.data import Problem, load_problems
from calmrl.data.prompts import PromptFormat
from calmrl.eval.runner import EvalResult, evaluate
from calmrl.io import atomic_open, write_json
from calmrl.models import load_model
from calmrl.models.compat import enable_checkpointing
from calmrl.models.lora import with_lora
from calmrl.rewards import evaluation_verifier, get_reward
from calmrl.rewards.shaping import overlong_penalty
from calmrl.rl.advantages import ADVANTAGES
from calmrl.rl.batch import Batch, PromptStream, informative_rows, make_batch, regroup
from calmrl.rl.checkpoint import (
    latest_checkpoint,
    load_model_weights,
    load_trainer_state,
    save_checkpoint,
    save_final,
    set_rng_state,
)
from calmrl.rl.run_dir import claim_run_dir
from calmrl.rl.run_logger import RunLogger
from calmrl.rl.update import PolicyUpdate
from calmrl.rl.value_head import ValueHead
from calmrl.sampling import Method, NonFiniteLogitsError, Rollouts, build_backend
from calmrl.sampling.metrics import rollout_metrics, throughput
from calmrl.sampling.random import derive_seed


class TrainingAborted(RuntimeError):
    """Too many consecutive steps with a non-finite loss, gradient or logits."""


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
        cfg = self.config = config
        self.run_dir = Path(cfg.train.output_dir)
        self.console = console
        # Everything that bad input can break is checked before the model loads.
        data = cfg.data
        fields = {"question_field": data.question_field, "answer_field": data.answer_field}
        self.train_problems = _as_config_error(
            "data.train", load_problems, data.train, limit=data.train_limit, seed=cfg.train.seed,
            **fields,
        )  # fmt: skip
        self.eval_problems = []
        if data.eval and cfg.train.eval_every > 0:
            self.eval_problems = _as_config_error(
                "data.eval", load_problems, data.eval, limit=data.eval_limit, seed=data.eval_seed,
                **fields,
            )  # fmt: skip
        self.prompt_format = _as_config_error(
            "data.few_shot",
            PromptFormat.build,
            system=data.system,
            math_suffix=data.math_suffix,
            few_shot=data.few_shot,
        )
        self.reward_fn = _as_config_error(
            "reward", get_reward, cfg.reward.name, **cfg.reward.params
        )
        self.verifier = evaluation_verifier(self.reward_fn)
        rollout = cfg.rollout
        self.method = Method(
            rollout.method, rollout.params, rollout.top_k, rollout.top_p, rollout.min_p
        )
        self.eval_method = Method(cfg.train.eval_method, cfg.train.eval_params)
        checkpoint = latest_checkpoint(self.run_dir) if resume else None
        if not resume:
            claim_run_dir(self.run_dir, overwrite=cfg.train.overwrite)

        torch.manual_seed(cfg.train.seed)
        if model is None:
            model, tokenizer = load_model(
                cfg.model.name, dtype=getattr(torch, cfg.model.dtype), device=cfg.model.device
            )
        self.tokenizer = tokenizer
        if cfg.model.gradient_checkpointing:
            enable_checkpointing(model)
        if cfg.model.lora_rank > 0:
            model = with_lora(model, cfg.model.lora_rank, cfg.model.lora_alpha)
        self.model = model
        self.device = next(model.parameters()).device
        algo = cfg.algorithm
        needs_values = ADVANTAGES.trait(algo.advantage, "needs_values", False)
        self.value_head = ValueHead.for_model(model) if needs_values else None
        reference = None
        if algo.kl_coef > 0:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.backend = build_backend(
            rollout.backend, model, tokenizer, batch_size=rollout.batch_size
        )

        param_groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        if self.value_head is not None:
            param_groups.append({"params": self.value_head.parameters(), "lr": cfg.optim.value_lr})
        optim = cfg.optim
        self.optimizer = torch.optim.AdamW(
            param_groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
        )
        warmup = optim.warmup_steps
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.update = PolicyUpdate(
            model, self.optimizer, algo, optim.grad_clip, self.value_head, reference, self._autocast
        )
        self.stream = PromptStream(self.train_problems, seed=cfg.train.seed)
        self.step = 0
        self.bad_steps = 0
        self.last_eval: EvalResult | None = None
        if checkpoint is not None:
            self._restore(checkpoint)
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
        """Train to ``train.steps``; returns the evaluations ``before`` / ``after`` (if any)."""
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
        if self.last_eval is not None:
            history["after"] = self.last_eval
        self.save_final()
        self.logger.close()
        return history

    def train_step(self) -> dict[str, float]:
        """One RL step; a step whose logits, loss or gradients are not finite is skipped."""
        timings: dict[str, float] = {"time/rollout": 0.0, "time/reward": 0.0}
        try:
            # 1-2. rollout and reward, refilling groups that carry no signal (DAPO)
            sampled, sampled_rewards, kept, kept_rewards = self.sample_and_score(timings)
            metrics = rollout_metrics(sampled, sampled_rewards)
            trained = 0.0
            if kept is None:
                metrics["skipped_no_signal"] = 1.0
            else:
                # 3. advantage, pi_old and TIS weights
                batch = self.make_batch(kept, kept_rewards, metrics)
                metrics = batch.metrics
                # 4. update, then the backend samples from the new weights
                started = time.perf_counter()
                seed = derive_seed(self.config.train.seed, self.step, "update")
                metrics.update(self.update(batch, seed=seed))
                timings["time/update"] = time.perf_counter() - started
                trained = float(batch.rollouts.response_mask.sum())
            metrics.update(throughput(metrics["rollout/tokens"], trained, timings))
        except NonFiniteLogitsError:
            metrics = {"nonfinite": 1.0}
        if metrics.get("nonfinite"):
            self._count_bad_step()
        else:
            self.bad_steps = 0
            if not metrics.get("skipped_no_signal"):
                # 5. schedule step (EAD's decay follows self.step, advanced by the caller)
                self.lr_schedule.step()
                self.backend.sync_weights(self.model)
        return {**metrics, **timings, "lr": self.lr_schedule.get_last_lr()[0]}

    def sample_and_score(
        self, timings: dict[str, float]
    ) -> tuple[Rollouts, torch.Tensor, Rollouts | None, torch.Tensor | None]:
        """Every sampled rollout with its reward, and the rows kept for training (None if none)."""
        cfg, algo = self.config.rollout, self.config.algorithm
        kept: list[Rollouts] = []
        kept_rewards: list[torch.Tensor] = []
        all_rollouts, all_rewards = [], []
        for _ in range(1 + (algo.max_refills if algo.dynamic_sampling else 0)):
            missing = cfg.prompts_per_step - sum(len(r) // cfg.n for r in kept)
            if missing <= 0:
                break
            problems, indices = self.stream.take(missing)
            started = time.perf_counter()
            self.model.eval()
            with self._autocast():
                rollouts = self.backend.generate(
                    self.prompts_for(problems),
                    self.method,
                    n=cfg.n,
                    max_new_tokens=cfg.max_new_tokens,
                    seed=self.config.train.seed,
                    step=self.step,
                    prompt_indices=indices,
                    stop=cfg.stop,
                )
            timings["time/rollout"] += time.perf_counter() - started
            started = time.perf_counter()
            rewards = self.score(rollouts, [p.answer for p in problems])
            timings["time/reward"] += time.perf_counter() - started
            all_rollouts.append(rollouts)
            all_rewards.append(rewards)
            rows = informative_rows(rewards, rollouts.group_index.cpu(), algo.dynamic_sampling)
            if len(rows):
                offset = sum(len(r) // cfg.n for r in kept)
                kept.append(regroup(rollouts.select(rows), offset=offset))
                kept_rewards.append(rewards[rows])
        pad = self.tokenizer.pad_token_id
        sampled = Rollouts.concat(all_rollouts, pad)
        if not kept:
            return sampled, torch.cat(all_rewards), None, None
        rollouts = Rollouts.concat(kept, pad).to(self.device)
        return sampled, torch.cat(all_rewards), rollouts, torch.cat(kept_rewards).to(self.device)

    def prompts_for(self, problems: list[Problem]) -> list[str]:
        return self.prompt_format.render_all(self.tokenizer, [p.question for p in problems])

    def score(self, rollouts: Rollouts, golds: list[str]) -> torch.Tensor:
        """The verifier's reward per row, plus DAPO's overlong shaping when configured."""
        algo = self.config.algorithm
        row_golds = [golds[g] for g in rollouts.group_index.tolist()]
        rewards = torch.tensor(self.reward_fn(rollouts.texts, row_golds), dtype=torch.float32)
        if algo.overlong_buffer:
            rewards += overlong_penalty(
                rollouts.response_lengths.cpu(),
                max_response_length=self.config.rollout.max_new_tokens,
                buffer_length=algo.overlong_buffer,
                penalty_factor=algo.overlong_penalty,
            )
        return rewards

    def make_batch(
        self, rollouts: Rollouts, rewards: torch.Tensor, metrics: dict[str, float]
    ) -> Batch:
        algo = self.config.algorithm
        # One no-grad pass over the batch when pi_old is recomputed or GAE needs V_old.
        forward = None
        if algo.recompute_old_logprobs or self.value_head is not None:
            forward = self.update.forward_in_chunks(rollouts)
        metrics = {**metrics, "rows_trained": float(len(rollouts))}
        return make_batch(rollouts, rewards, algo, forward=forward, metrics=metrics)

    def _count_bad_step(self) -> None:
        self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.bad_steps >= self.config.train.max_bad_steps:
            raise TrainingAborted(
                f"train.max_bad_steps: {self.bad_steps} consecutive steps had a non-finite "
                "loss, gradient or logits; lower optim.lr or check the data"
            )

    # -- evaluation, console ----------------------------------------------------------------------

    def run_eval(self) -> EvalResult:
        cfg = self.config
        self.model.eval()
        with self._autocast():
            result = evaluate(
                self.backend,
                self.eval_problems,
                self.eval_method,
                prompts=self.prompts_for(self.eval_problems),
                verifier=self.verifier,
                n=cfg.train.eval_n,
                ks=cfg.train.eval_k,
                max_new_tokens=cfg.rollout.max_new_tokens,
                seed=cfg.data.eval_seed,
                chunk_rows=cfg.rollout.batch_size or 64,
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
            self.run_dir, self.step, self.model, self.tokenizer, self.trainer_state(),
            keep=self.config.train.keep_checkpoints,
        )  # fmt: skip

    def save_final(self) -> Path:
        return save_final(self.run_dir, self.model, self.tokenizer, self.value_head)

    def _restore(self, latest: Path) -> None:
        load_model_weights(latest, self.model, self.device)
        state = load_trainer_state(latest)
        if self.value_head is not None:
            if state.get("value_head") is None:
                raise ValueError(f"--resume: checkpoint {latest} has no value head (advantage=gae)")
            self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.step, self.stream.cursor = state["step"], state["cursor"]
        self.bad_steps = state["bad_steps"]
        set_rng_state(state["rng"])

    @property
    def finished(self) -> bool:
        return self.step >= self.config.train.steps


def _as_config_error(key: str, build: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``build``; a bad-input error is re-raised as one line naming the config key."""
    try:
        return build(*args, **kwargs)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise ValueError(f"{key}: {error}") from None


def run_training(config: Config, *, resume: bool = False, console: Any = None) -> dict[str, Any]:
    """Build a trainer from a config and train; returns the before/after evaluations.

    Resuming a run that already reached ``train.steps`` says so and returns ``{}``.
    """
    trainer = Trainer(config, resume=resume, console=console)
    if resume and trainer.finished:
        steps = config.train.steps
        message = f"{trainer.run_dir}: the run is complete ({trainer.step} of {steps} steps)"
        if console is not None:
            console.print(message, soft_wrap=True)
        trainer.logger.close()
        return {}
    return trainer.train()
