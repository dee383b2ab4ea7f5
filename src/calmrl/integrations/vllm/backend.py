"""``rollout.backend: vllm``: a colocated ``vllm.LLM`` in the trainer's process.

- The engine starts from a copy of the trainer's model written to a temporary directory, and
  after each optimizer step ``sync_weights`` hands it the new tensors in place
  (``collective_rpc("reload_weights")``, the path that works on the CPU build; the model's
  own ``load_weights`` where that is missing). ``generate`` also syncs when the module's
  parameters changed since the last sync (a resumed checkpoint loads in place).
- Every row is its own request seeded from (seed, step, prompt index, sample index)
  (``calmrl.sampling.random.row_seeds``), so a row's tokens do not depend on its batch-mates;
  prefix caching still computes a prompt once for its ``n`` rows.
- A schedule runs in calmrl's vLLM processor (``processor.py``); a constant temperature runs
  as vLLM's own ``temperature``. vLLM reports ``processed_logprobs``, the log-probs of the
  distribution each token was drawn from: the ``behaviour_logprobs``. It returns one kind of
  log-prob only, so pi_old (tau = 1) and the tau = 1 entropies come from one no-grad forward
  of the trainer's model (``calmrl.rl.forward.response_logprobs``), as calmrl's update needs.
- The engine must live in this process for weight sync: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``
  is set before vLLM is imported (a run that set it to 1 gets a one-line error).
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from calmrl.integrations.vllm.spec import CONSTANT, check_method, request_args, spec_of
from calmrl.models.compat import eos_token_ids
from calmrl.rl.forward import response_logprobs
from calmrl.sampling.engine import NonFiniteLogitsError, _decode, _encode
from calmrl.sampling.entropy_clock import EntropyClockSampler
from calmrl.sampling.methods import Method, make_method_sampler
from calmrl.sampling.prefill import left_pad
from calmrl.sampling.random import row_seeds
from calmrl.sampling.rollouts import Rollouts

_SEED_MASK = (1 << 63) - 1  # vLLM seeds a torch.Generator: a non-negative 64-bit integer
# Rows per no-grad forward for pi_old: [rows, T, V] fp32 logits must fit beside the engine.
_FORWARD_ROWS = 16
# What calmrl chooses for vLLM unless rollout.vllm says otherwise.
_ENGINE_DEFAULTS: dict[str, Any] = {"seed": 0, "enable_prefix_caching": True}


def _engine_kwargs(engine: dict[str, Any], batch_size: int | None) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments from the ``rollout.vllm`` section."""
    settings = {k: v for k, v in dict(engine).items() if v is not None}
    extra = settings.pop("engine_args", None) or {}
    kwargs = {**_ENGINE_DEFAULTS, **settings, **extra}
    if batch_size is not None:
        kwargs.setdefault("max_num_seqs", batch_size)
    # Behaviour log-probs are the point: after temperature, calmrl's schedule and top-k/top-p.
    kwargs["logprobs_mode"] = "processed_logprobs"
    return kwargs


class VLLMBackend:
    """A ``RolloutBackend`` over vLLM; ``engine`` holds ``vllm.LLM`` settings (``rollout.vllm``)."""

    name = "vllm"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int | None = None,
        engine: dict[str, Any] | None = None,
    ):
        if hasattr(model, "peft_config"):
            raise ValueError(
                "model.lora_rank: the vllm backend syncs full weights and cannot sync LoRA "
                "adapters yet; use rollout.backend=hf with LoRA"
            )
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            raise ValueError(
                "rollout.backend: vllm runs in the trainer's process to sync weights; unset "
                "VLLM_ENABLE_V1_MULTIPROCESSING or set it to 0"
            )
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError(
                f"rollout.backend: vllm is not importable ({error}); install calmrl[vllm], "
                "or use the venv `make test-vllm` builds"
            ) from None
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._dir = tempfile.mkdtemp(prefix="calmrl-vllm-")
        # The copy of the weights the engine started from goes with the backend, or at exit
        # (the trainer does not close its backend).
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        try:
            model.save_pretrained(self._dir, safe_serialization=True)
            tokenizer.save_pretrained(self._dir)
            kwargs = _engine_kwargs(engine or {}, batch_size)
            if kwargs.get("dtype", "auto") == "auto":
                # vLLM's own "auto" runs an fp32 checkpoint in half precision; the behaviour
                # log-probs must come from the weights the trainer differentiates.
                kwargs["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
            self.llm = LLM(model=self._dir, tokenizer=self._dir, **kwargs)
        except BaseException:
            self._remove_dir()
            raise
        self._synced = _fingerprint(model)

    # ---- RolloutBackend ------------------------------------------------------------------

    def check(self, method: Method) -> None:
        check_method(method)

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        method: Method,
        *,
        n: int = 1,
        max_new_tokens: int = 256,
        seed: int | None = None,
        step: int = 0,
        prompt_indices: Sequence[int] | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Rollouts:
        if n < 1:
            raise ValueError(f"n: must be >= 1, got {n}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
        check_method(method)
        if _fingerprint(self.model) != self._synced:
            self.sync_weights(self.model)
        encoded = _encode(self.tokenizer, prompts)
        indices = list(range(len(encoded))) if prompt_indices is None else list(prompt_indices)
        if len(indices) != len(encoded):
            raise ValueError(f"prompt_indices: got {len(indices)} for {len(encoded)} prompts")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        seeds = row_seeds(seed, step, indices, n).tolist()
        rows = [ids for ids in encoded for _ in range(n)]
        params = self._params(method, step, max_new_tokens, stop, ignore_eos)
        outputs = []
        # Whole groups per call, so ``progress`` moves; vLLM batches continuously inside one.
        per_call = max(1, (self.batch_size or len(rows)) // n) * n
        for start in range(0, len(rows), per_call):
            chunk = range(start, min(start + per_call, len(rows)))
            requests = [{"prompt_token_ids": rows[i]} for i in chunk]
            sampling = [params(seeds[i] & _SEED_MASK) for i in chunk]
            outputs += self.llm.generate(requests, sampling, use_tqdm=False)
            if progress is not None:
                progress(len(chunk))
        return self._rollouts(rows, outputs, method, n, step, list(stop))

    def sync_weights(self, model: PreTrainedModel) -> None:
        """Load ``model``'s current tensors into the engine, in place, and drop cached prefixes
        (their KV was computed with the old weights)."""
        self.model = model
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": _weights(model)})
        except (AttributeError, NotImplementedError, TypeError):
            # Older vLLM without reload_weights: the model's own loader (TRL's path).
            runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
            runner.model.load_weights(_weights(model))
        self.llm.reset_prefix_cache()
        self._synced = _fingerprint(model)

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm
            gc.collect()
        self._remove_dir()

    # ---- helpers ---------------------------------------------------------------------------

    def _params(
        self, method: Method, step: int, max_new_tokens: int, stop: Sequence[str], ignore_eos: bool
    ) -> Callable[[int], Any]:
        from vllm import SamplingParams

        spec = spec_of(method.name, method.params, step=step)
        common: dict[str, Any] = {
            "n": 1,
            "max_tokens": max_new_tokens,
            "logprobs": 0,  # the sampled token's processed log-prob
            "top_k": method.top_k or 0,
            "top_p": 1.0 if method.top_p is None else method.top_p,
            "min_p": method.min_p or 0.0,
            "stop": list(stop) or None,
            "ignore_eos": ignore_eos,
            # calmrl's EOS set (generation config and tokenizer), as its own engine stops on.
            "stop_token_ids": None if ignore_eos else eos_token_ids(self.model, self.tokenizer),
        }
        if spec.kind == CONSTANT:  # vLLM's own temperature: min-p then sees h / tau as ours
            common["temperature"] = spec.tau
        else:
            common["temperature"] = 1.0
            common["extra_args"] = request_args(method, step)
        return lambda seed: SamplingParams(seed=seed, **common)

    def _rollouts(
        self,
        rows: list[list[int]],
        outputs: list[Any],
        method: Method,
        n: int,
        step: int,
        stop: list[str],
    ) -> Rollouts:
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        completions = [output.outputs[0] for output in outputs]
        width = max(1, max(len(c.token_ids) for c in completions))
        response_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        response_mask = torch.zeros((len(rows), width), dtype=torch.long)
        behaviour = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, c in enumerate(completions):
            ids = list(c.token_ids)
            response_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            response_mask[i, : len(ids)] = 1
            behaviour[i, : len(ids)] = torch.tensor(
                [entry[token].logprob for entry, token in zip(c.logprobs, ids, strict=True)]
            )
        prompt_ids, prompt_mask = left_pad(rows, pad)
        rollouts = Rollouts(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            temperatures=torch.zeros_like(behaviour),
            behaviour_logprobs=behaviour,
            logprobs=torch.zeros_like(behaviour),
            entropies=torch.zeros_like(behaviour),
            group_index=torch.arange(len(rows) // n).repeat_interleave(n),
            texts=_decode(self.tokenizer, response_ids, response_mask, stop),
            finish_reasons=[_finish_reason(c) for c in completions],
        ).to(device)
        self._policy_forward(rollouts, n)
        rollouts.temperatures = _temperatures(method, step, rollouts)
        return rollouts

    @torch.no_grad()
    def _policy_forward(self, rollouts: Rollouts, n: int) -> None:
        """pi_old log-probs and tau = 1 entropies, in whole groups of rows at a time."""
        per_chunk = max(1, _FORWARD_ROWS // n) * n
        mask = rollouts.response_mask.bool()
        for start in range(0, len(rollouts), per_chunk):
            index = torch.arange(start, min(start + per_chunk, len(rollouts)))
            forward = response_logprobs(self.model, rollouts.select(index))
            rows = index.to(mask.device)
            rollouts.logprobs[rows] = forward.logprobs.float().masked_fill(~mask[rows], 0.0)
            rollouts.entropies[rows] = forward.entropy.float().masked_fill(~mask[rows], 0.0)
        if not torch.isfinite(rollouts.logprobs).all():
            raise NonFiniteLogitsError("model returned non-finite logits on vLLM's rollouts")


def _temperatures(method: Method, step: int, rollouts: Rollouts) -> torch.Tensor:
    """The temperature each token was drawn at: the schedule at its position, or for the
    entropy clock the clock over the forward's tau = 1 entropies (what the processor summed
    over vLLM's logits, equal to float tolerance)."""
    mask = rollouts.response_mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape)
    sampler = make_method_sampler(method)
    if isinstance(sampler, EntropyClockSampler):
        w = sampler.position_weight
        increments = w + (1 - w) * rollouts.entropies.double() / sampler.entropy_ref
        clock = increments.cumsum(-1) - increments  # sum over s < t
        annealed = sampler.schedule.annealed(clock, step)
        warm = positions < sampler.schedule.warmup_tokens
        tau = torch.where(warm, torch.ones_like(annealed), annealed).float()
    else:
        tau = sampler.schedule.temperatures(positions, step).float()
    return tau.masked_fill(~mask, 0.0)


def _finish_reason(completion: Any) -> str:
    if completion.finish_reason == "length":
        return "length"
    # A matched stop string is reported as the string; EOS as None (or its token id).
    return "stop" if isinstance(completion.stop_reason, str) else "eos"


def _weights(model: PreTrainedModel) -> list[tuple[str, torch.Tensor]]:
    # HF checkpoint names: vLLM's loaders map them as when reading the model's files. A list
    # of references, not copies.
    return [(name, tensor.detach()) for name, tensor in model.state_dict().items()]


def _fingerprint(model: PreTrainedModel) -> tuple[tuple[int, int], ...]:
    """Changes whenever a parameter is written in place (optimizer step, checkpoint load) or
    replaced: torch bumps a tensor's version counter on every in-place write."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())
