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
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from calmrl.config import Config
from calmrl.data import Problem
from calmrl.eval.runner import EvalResult, evaluate
from calmrl.io import atomic_open, write_json
from calmrl.models import load_model
from calmrl.models.compat import enable_checkpointing, resolve_autocast
from calmrl.models.lora import is_lora, with_lora
from calmrl.preflight import as_config_error, check_inputs
from calmrl.rewards.shaping import shaped_rewards
from calmrl.rl import run_dir as runs
from calmrl.rl.advantages import ADVANTAGES
from calmrl.rl.batch import Batch, PromptStream, make_batch
from calmrl.rl.checkpoint import (
    list_checkpoints,
    load_latest_readable,
    restore_rng,
    rng_state,
    save_checkpoint,
    save_final,
)
from calmrl.rl.collect import Collected, collect_groups
from calmrl.rl.distributed import close as close_world
from calmrl.rl.distributed import local_device, reduce_totals, world_from_env
from calmrl.rl.run_logger import TENSORBOARD_MISSING, RunConsole, RunLogger
from calmrl.rl.sharding import Sharding
from calmrl.rl.signals import StopFlag, stop_on_signals
from calmrl.rl.update import PolicyUpdate
from calmrl.rl.value_head import ValueHead
from calmrl.sampling import NonFiniteLogitsError, Rollouts, build_backend
from calmrl.sampling.metrics import metrics_from_totals, throughput
from calmrl.sampling.random import derive_seed


class TrainingAborted(RuntimeError):
    """Too many consecutive steps with a non-finite loss, gradient or logits."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM / SIGINT: the step finished and a checkpoint was written."""

    def __init__(self, message: str, *, signal: int):
        super().__init__(message)
        self.signal = signal


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
        self.ui = RunConsole(console, cfg.train.steps)
        # Everything that bad input can break is checked before the model loads.
        inputs = check_inputs(cfg, resume=resume, model_given=model is not None)
        self.train_problems, self.eval_problems = inputs.train_problems, inputs.eval_problems
        self.prompt_format, self.reward_fn = inputs.prompt_format, inputs.reward_fn
        self.verifier, self.method = inputs.verifier, inputs.method
        self.eval_method = inputs.eval_method
        checkpoints = list_checkpoints(self.run_dir) if resume else []  # preflight: >= 1
        device = local_device(inputs.device)
        self.world = world_from_env(device, timedelta(seconds=cfg.train.dist_timeout_s))
        if not self.world.is_main:  # one console line per step, from rank 0
            self.ui = RunConsole(None, cfg.train.steps)
        if self.world.size > cfg.rollout.prompts_per_step:
            raise ValueError(
                f"rollout.prompts_per_step: {cfg.rollout.prompts_per_step} prompts cannot feed "
                f"{self.world.size} ranks; use at least one prompt per rank"
            )

        torch.manual_seed(cfg.train.seed)
        if model is None:
            with self.ui.status(f"loading {cfg.model.name} (built-ins convert once, ~30 s)"):
                model, tokenizer = load_model(
                    cfg.model.name, dtype=getattr(torch, cfg.model.dtype), device=device
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
        if algo.kl_coef > 0:  # a full, frozen copy on every rank (also under FSDP2)
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        if cfg.train.parallel == "fsdp2" and (self.value_head is not None or is_lora(model)):
            raise ValueError("train.parallel: fsdp2 supports neither LoRA nor GAE yet; use ddp")
        self.sharding = Sharding(model, self.world, enabled=cfg.train.parallel == "fsdp2")
        self.backend = build_backend(
            cfg.rollout.backend, model, tokenizer, **cfg.rollout.backend_options()
        )
        for key, method in (("rollout", self.method), ("train.eval", self.eval_method)):
            as_config_error(key, self.backend.check, method)

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
            model, self.optimizer, algo, optim.grad_clip, self.value_head, reference,
            self._autocast, self.world, self.sharding,
        )  # fmt: skip
        self.stream = PromptStream(self.train_problems, seed=cfg.train.seed)
        self.step = 0
        self.bad_steps = 0
        self.last_eval: EvalResult | None = None
        if resume:
            self._restore(checkpoints)
        # Only now, with every input checked and the model loaded, may an earlier run go.
        self.previous_run = None
        if self.world.is_main:  # rank 0 alone writes the run directory
            self.previous_run = None if resume else runs.set_aside_previous_run(self.run_dir)
            runs.mark_run(self.run_dir)
            with atomic_open(self.run_dir / "config.yaml") as handle:
                handle.write(cfg.to_yaml())
        self.world.barrier()
        self.logger = RunLogger(
            self.run_dir,
            enabled=self.world.is_main,
            resume_step=self.step if resume else None,
            tensorboard=cfg.train.tensorboard,
            wandb_project=cfg.train.wandb_project,
            config=cfg.model_dump(mode="json"),
        )
        if self.logger.tensorboard_missing:
            self.ui.note(TENSORBOARD_MISSING)

    # -- the loop -------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Train to ``train.steps``; returns the evaluations ``before`` / ``after`` (if any).

        SIGTERM or SIGINT finishes the current step, writes a checkpoint and raises
        ``TrainingInterrupted``; a second signal abandons the step at once. If the run fails
        before its first checkpoint, an earlier run it replaced is moved back.
        """
        try:
            with stop_on_signals() as stop:
                history = self._train(stop)
        except BaseException:
            if self.previous_run is not None:
                runs.restore_previous_run(self.run_dir)
                self.previous_run = None
            raise
        return history

    def _train(self, stop: StopFlag) -> dict[str, Any]:
        cfg = self.config.train
        history: dict[str, Any] = {}
        if cfg.eval_every and cfg.eval_before and self.step == 0:
            with self.ui.status("evaluating before training"):
                history["before"] = self.run_eval()
            self.logger.log(0, history["before"].flat_metrics(prefix="eval/"))
        while self.step < cfg.steps and not self._stop_signal(stop):
            started = time.perf_counter()
            with self.ui.status(f"step {self.step + 1}/{cfg.steps}: rollouts"):
                metrics = self.train_step()
            self.step += 1
            metrics["time/step"] = time.perf_counter() - started
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                with self.ui.status(f"evaluating at step {self.step}"):
                    metrics.update(self.run_eval().flat_metrics(prefix="eval/"))
            self.logger.log(self.step, metrics)
            self.ui.report(self.step, metrics)
            if self.bad_steps >= cfg.max_bad_steps:
                raise TrainingAborted(
                    f"train.max_bad_steps: {self.bad_steps} consecutive steps up to step "
                    f"{self.step} had a non-finite loss, gradient or logits; lower optim.lr or "
                    "check the data"
                )
            # A skipped step checkpoints nothing, so it cannot rotate a good checkpoint out.
            if cfg.save_every and self.step % cfg.save_every == 0 and not metrics.get("nonfinite"):
                self.save()
        if signum := self._stop_signal(stop):
            path = self.save()
            raise TrainingInterrupted(
                f"interrupted by {signal.Signals(signum).name} after step {self.step}; "
                f"checkpoint {path}; continue with: calmrl train --resume {self.run_dir}",
                signal=signum,
            )
        if self.last_eval is not None:
            history["after"] = self.last_eval
        self.save_final()
        return history

    def _stop_signal(self, stop: StopFlag) -> int:
        """The signal any rank got (all ranks stop after the same step), or 0."""
        return int(self.world.all_max(torch.tensor(stop.signal)))

    def train_step(self) -> dict[str, float]:
        """One RL step; a step whose logits, loss or gradients are not finite is skipped."""
        timings: dict[str, float] = {"time/rollout": 0.0, "time/reward": 0.0}
        try:
            # 1-2. rollout and reward, refilling groups that carry no signal (DAPO)
            collected = self.sample_and_score(timings)
            metrics = metrics_from_totals(collected.totals)
            trained = 0.0
            if collected.rollouts is None:
                metrics["skipped_no_signal"] = 1.0
            else:
                # 3. advantage, pi_old and TIS weights
                batch = self.make_batch(
                    collected.rollouts, collected.rewards, metrics, collected.row_keys
                )
                metrics = batch.metrics
                # 4. update, then the backend samples from the new weights
                self.ui.phase(f"update on {len(batch.rollouts)} rows")
                started = time.perf_counter()
                seed = derive_seed(self.config.train.seed, self.step, "update")
                metrics.update(self.update(batch, seed=seed))
                timings["time/update"] = time.perf_counter() - started
                trained = float(self.world.all_sum(batch.rollouts.response_mask.sum()))
            metrics.update(throughput(metrics["rollout/tokens"], trained, timings))
        except NonFiniteLogitsError:
            metrics = {"nonfinite": 1.0}
        if metrics.get("nonfinite"):
            self.bad_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.bad_steps = 0
            if not metrics.get("skipped_no_signal"):
                # 5. schedule step (EAD's decay follows self.step, advanced by the caller)
                self.lr_schedule.step()
                self.backend.sync_weights(self.model)
        metrics["dist/world_size"] = float(self.world.size)
        return {**metrics, **timings, "lr": self.lr_schedule.get_last_lr()[0]}

    def sample_and_score(self, timings: dict[str, float]) -> Collected:
        """This rank's share of the step's groups, sampled and scored (``rl.collect``)."""
        cfg, algo = self.config.rollout, self.config.algorithm
        return collect_groups(
            lambda problems, indices: self._sample_scored(problems, indices, timings),
            self.stream,
            self.world,
            prompts_per_step=cfg.prompts_per_step,
            n=cfg.n,
            attempts=1 + (algo.max_refills if algo.dynamic_sampling else 0),
            dynamic_sampling=algo.dynamic_sampling,
            pad_token_id=self.tokenizer.pad_token_id,
            device=self.device,
        )

    def _sample_scored(
        self, problems: list[Problem], indices: list[int], timings: dict[str, float]
    ) -> tuple[Rollouts, torch.Tensor]:
        cfg = self.config.rollout
        started = time.perf_counter()
        self.model.eval()
        with self._autocast(), self.sharding.gathered():
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
        self.ui.phase(f"rewards for {len(rollouts)} rollouts")
        started = time.perf_counter()
        rewards = self.score(rollouts, [p.answer for p in problems])
        timings["time/reward"] += time.perf_counter() - started
        return rollouts, rewards

    def prompts_for(self, problems: list[Problem]) -> list[str]:
        return self.prompt_format.render_all(self.tokenizer, [p.question for p in problems])

    def score(self, rollouts: Rollouts, golds: list[str]) -> torch.Tensor:
        """The verifier's reward per row, plus DAPO's overlong shaping when configured."""
        algo, row_golds = self.config.algorithm, [golds[g] for g in rollouts.group_index.tolist()]
        return shaped_rewards(
            self.reward_fn(rollouts.texts, row_golds), rollouts.response_lengths.cpu(),
            max_response_length=self.config.rollout.max_new_tokens,
            overlong_buffer=algo.overlong_buffer, penalty_factor=algo.overlong_penalty,
        )  # fmt: skip

    def make_batch(
        self,
        rollouts: Rollouts,
        rewards: torch.Tensor,
        metrics: dict[str, float],
        row_keys: torch.Tensor | None = None,
    ) -> Batch:
        algo = self.config.algorithm
        # One no-grad pass over the batch when pi_old is recomputed or GAE needs V_old.
        forward = None
        if algo.recompute_old_logprobs or self.value_head is not None:
            forward = self.update.forward_in_chunks(rollouts)
        rows = float(self.world.all_sum(rollouts.response_mask.any(-1).sum().float()))
        metrics = {**metrics, "rows_trained": rows}
        return make_batch(
            rollouts, rewards, algo, forward=forward, metrics=metrics, row_keys=row_keys,
            reduce=lambda totals: reduce_totals(self.world, totals),
            gather=lambda tensor: torch.cat(self.world.gather(tensor.cpu())).to(tensor.device),
        )  # fmt: skip

    def run_eval(self) -> EvalResult:
        cfg = self.config
        self.model.eval()
        with self._autocast(), self.sharding.gathered():
            result = evaluate(
                self.backend,
                self.eval_problems,
                self.eval_method,
                prompts=self.prompts_for(self.eval_problems),
                progress=lambda done, acc: self.ui.phase(f"{done} problems, accuracy {acc:.3f}"),
                verifier=self.verifier,
                n=cfg.train.eval_n,
                ks=cfg.train.eval_k,
                max_new_tokens=cfg.rollout.max_new_tokens,
                seed=cfg.data.eval_seed,
                chunk_rows=cfg.rollout.batch_size or 64,
                world=self.world,
            )
        self.last_eval = result
        if self.world.is_main:
            write_json(self.run_dir / "evals" / f"step-{self.step:06d}.json", result.to_dict())
        return result

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = resolve_autocast(self.config.model.autocast, self.device)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    # -- checkpoints ----------------------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "cursor": self.stream.cursor,
            "bad_steps": self.bad_steps,
            "optimizer": self.sharding.optimizer_state(self.optimizer),
            "lr_schedule": self.lr_schedule.state_dict(),
            "value_head": self.value_head.state_dict() if self.value_head is not None else None,
        }

    def save(self) -> Path:
        """Every rank's RNG goes into rank 0's checkpoint; the others wait until it is there."""
        state = {**self.trainer_state(), "rng_ranks": self.world.gather(rng_state())}
        weights = self.sharding.model_state()  # FSDP2: gathered to rank 0
        path = self.run_dir / "checkpoints" / f"step-{self.step:06d}"
        if self.world.is_main:
            keep, model = self.config.train.keep_checkpoints, self.sharding.saveable(weights)
            save_checkpoint(self.run_dir, self.step, model, self.tokenizer, state, keep)
            self._drop_previous_run()
        self.world.barrier()
        return path

    def save_final(self) -> Path:
        weights = self.sharding.model_state()
        if self.world.is_main:
            save_final(
                self.run_dir, self.sharding.saveable(weights), self.tokenizer, self.value_head
            )
            self._drop_previous_run()
        self.world.barrier()
        return self.run_dir / "final"

    def _drop_previous_run(self) -> None:
        """The new run has a checkpoint of its own: the run it replaced can go."""
        if self.previous_run is not None:
            runs.discard_previous_run(self.run_dir)
            self.previous_run = None

    def _restore(self, checkpoints: list[Path]) -> None:
        """The non-finite streak is not carried over: a resumed run (say, with a lower
        learning rate) starts counting afresh."""
        checkpoint, state = load_latest_readable(
            checkpoints, lambda weights, st: self.sharding.load(weights, self.optimizer, st)
        )
        if self.value_head is not None:
            if state.get("value_head") is None:
                raise ValueError(f"--resume: {checkpoint} has no value head (advantage=gae)")
            self.value_head.load_state_dict(state["value_head"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.step, self.stream.cursor = state["step"], state["cursor"]
        restore_rng(state, self.world.rank, self.world.size)

    @property
    def finished(self) -> bool:
        return self.step >= self.config.train.steps


def run_training(config: Config, *, resume: bool = False, console: Any = None) -> dict[str, Any]:
    """Build a trainer from a config and train; returns the before/after evaluations.

    Resuming a run that already reached ``train.steps`` says so and returns ``{}``.
    """
    trainer = Trainer(config, resume=resume, console=console)
    completed = False
    try:
        if resume and trainer.finished:
            trainer.ui.note(f"{trainer.run_dir}: the run is complete ({trainer.step} of "
                            f"{config.train.steps} steps)")  # fmt: skip
            history: dict[str, Any] = {}
        else:
            history = trainer.train()
        completed = True
        return history
    finally:
        trainer.logger.close()
        close_world(trainer.world, wait=completed)
