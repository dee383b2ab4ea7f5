"""Typed configuration: the one source of defaults. YAML recipes and ``a.b=value`` overrides.

Unknown keys and invalid values fail before any work, with one line naming the key and the
allowed values (``ConfigError``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from calmrl.integrations.vllm import spec as vllm_spec
from calmrl.models import DEFAULT_MODEL
from calmrl.rl.advantages import ADVANTAGES
from calmrl.rl.losses import KL_KINDS, POLICY_LOSSES
from calmrl.rl.reductions import AGG_MODES
from calmrl.sampling import Method, backend_names, validate_method
from calmrl.sampling.distributions import validate_truncation


class ConfigError(ValueError):
    """A config problem, reported as one line naming the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _one_of(name: str, value: str, allowed: list[str] | tuple[str, ...]) -> str:
    """Validators raise ``"<field>: <message>"``; the formatter prefixes the section."""
    if value not in allowed:
        raise ValueError(f"{name}: unknown {value!r}; choose one of: {', '.join(allowed)}")
    return value


class ModelConfig(_Section):
    name: str = DEFAULT_MODEL
    """Built-in name, .gguf file, HF directory or hub id (online only)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype. Keep fp32 (master weights for AdamW) and use ``autocast`` for speed."""
    device: str = "cpu"
    autocast: Literal["auto", "bfloat16"] | None = None
    """Compute dtype under torch.autocast for rollouts, update and eval; fp32 master weights
    either way. ``auto``: bf16 on a bf16 GPU or a CPU with AMX-BF16 or AVX512-BF16, fp32
    elsewhere (bf16 matmuls are ~100x slower than fp32 on AVX2-only CPUs). Default None:
    fp32, whose behaviour and pi_old log-probs agree to ~1e-5; under bf16 they differ by up to
    ~27% per token and TIS corrects it (docs/benchmarks.md section 1). ``calmrl demo`` runs
    with ``auto``. (fp16 would need loss scaling, so it is not offered.)"""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% more compute)."""
    lora_rank: int = Field(0, ge=0)
    """0 = full fine-tuning; > 0 trains LoRA adapters through peft."""
    lora_alpha: float = Field(16.0, gt=0)


class DataConfig(_Section):
    train: str = "arith-add-2"
    """Preset (gsm8k, math-train, ...), built-in task (arith-add-1, ...), file or HF dataset."""
    eval: str | None = "arith-add-2"
    train_limit: int | None = Field(None, ge=1)
    eval_limit: int = Field(16, ge=1)
    eval_seed: int = 1_000_003
    """Built-in tasks draw eval problems with this seed (training draws use train.seed)."""
    few_shot: str | None = "arith-add-2"
    """Task whose worked examples are prepended as chat turns (None for zero-shot)."""
    system: str | None = None
    math_suffix: bool = True
    question_field: str | None = None
    answer_field: str | None = None


class VLLMConfig(_Section):
    """``vllm.LLM`` settings for ``rollout.backend: vllm`` (README, "Scaling out with vLLM")."""

    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    """GPU share for vLLM's weights and KV cache (the trainer's model shares the GPU)."""
    enforce_eager: bool = True
    """No torch.compile / CUDA graphs: starts in seconds (compiling takes minutes on CPU)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: the trainer model's dtype (keep float32 for exact log-probs)."""
    max_model_len: int | None = Field(None, ge=1)
    """Prompt + response tokens per request (None: the model's maximum)."""
    max_num_seqs: int | None = Field(None, ge=1)
    """Requests decoded together (None: rollout.batch_size, else vLLM's default)."""
    kv_cache_memory_bytes: int | None = Field(None, ge=1)
    """KV cache size (None: from gpu_memory_utilization; the CPU build: VLLM_CPU_KVCACHE_SPACE)."""
    enable_prefix_caching: bool = True
    """A prompt's KV is computed once for its n rows."""
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Any other vllm.LLM keyword, passed as is (e.g. {tensor_parallel_size: 2})."""


class RolloutConfig(_Section):
    backend: str = "hf"
    """Where rollouts come from: hf (calmrl's engine) or vllm (a colocated vLLM engine)."""
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    """Engine settings for backend vllm."""
    method: str = "ead-paper"
    """A registered sampling method (``calmrl.sampling.method_names()``)."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Method parameters, e.g. {tau: 1.0} for constant, {tau_min: 0.8} for EAD, {depth: 8} LED,
    {entropy_ref: 0.3} for ead-entropy."""
    n: int = Field(8, ge=1)
    """Rollouts per prompt (the GRPO group size G)."""
    prompts_per_step: int = Field(8, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    min_p: float | None = Field(None, ge=0, lt=1)
    batch_size: int | None = Field(None, ge=1)
    """Rows decoded together (None: all rows of a step at once)."""
    stop: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_method(self) -> RolloutConfig:
        _one_of("backend", self.backend, backend_names())
        validate_method(self.method, self.params)  # LED's values need the model: checked later
        validate_truncation(self.top_k, self.top_p, self.min_p)
        if self.backend == "vllm":  # what a vLLM logits processor cannot host, before loading
            vllm_spec.check_method(
                Method(self.method, self.params, self.top_k, self.top_p, self.min_p)
            )
        return self

    def backend_options(self) -> dict[str, Any]:
        """Keyword arguments of ``build_backend`` for the selected backend."""
        options: dict[str, Any] = {"batch_size": self.batch_size}
        if self.backend == "vllm":
            options["engine"] = self.vllm.model_dump()
        return options


class RewardConfig(_Section):
    name: str = "math"
    """Registered verifier name or ``package.module:function``."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Verifier options, e.g. {correct: 1.0, incorrect: 0.0, number_fallback: false}."""


class AlgorithmConfig(_Section):
    advantage: str = "grpo"
    """A registered estimator: grpo | dr_grpo | rloo | gae (PPO with a value head on the
    policy's trunk, rl/value_head.py)."""
    norm_eps: float = Field(1e-6, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    """GAE discount (veRL default 1.0)."""
    lam: float = Field(1.0, ge=0, le=1)
    """GAE lambda (veRL default 1.0; 0.95 is the classic PPO choice)."""
    value_coef: float = Field(0.1, gt=0)
    """Weight of the value loss in the shared-trunk loss (TRL's vf_coef)."""
    value_clip: float = Field(0.5, gt=0)
    """Value clipping range around the rollout-time values (veRL cliprange_value)."""
    entropy_shaping: bool = False
    """Cheng et al.: A + min(alpha * H.detach(), |A| / kappa)."""
    shaping_alpha: float = Field(0.4, ge=0)
    shaping_kappa: float = Field(2.0, gt=0)
    top_entropy_quantile: float = Field(1.0, gt=0, le=1)
    """Forking tokens (Wang et al. 2025): policy gradient through the top q fraction of the
    step's response tokens by entropy (the paper: 0.2); 1 = every token."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and refill from new prompts."""
    max_refills: int = Field(2, ge=0)
    overlong_buffer: int = Field(0, ge=0)
    """DAPO soft overlong punishment over the last N tokens of max_new_tokens (0 = off)."""
    overlong_penalty: float = Field(1.0, ge=0)
    loss: str = "vanilla"
    """A registered policy loss: vanilla | clip_cov | kl_cov."""
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.28, ge=0)
    """DAPO clip-higher; set equal to clip_low for symmetric PPO clipping."""
    clip_ratio_c: float = Field(3.0, gt=1)
    agg: str = "token-mean"
    """Loss aggregation (veRL's loss_agg_mode): token-mean | token-sum | seq-mean-token-sum |
    seq-mean-token-mean | seq-mean-token-sum-norm."""
    kl_coef: float = Field(0.0, ge=0)
    """> 0 adds a KL penalty to a frozen copy of the initial policy."""
    kl_kind: str = "low_var_kl"
    """KL estimator: kl | k1 | abs | mse | k2 | low_var_kl | k3, a trailing + for the k2
    straight-through gradient (k3+)."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy regularisation -coef * H, the baseline entropy shaping is compared with."""
    tis: bool = True
    """Truncated importance sampling from the engine's behaviour log-probs (EAD appendix B)."""
    tis_cap: float = Field(2.0, gt=0)
    tis_level: Literal["token", "sequence"] = "token"
    tis_mode: Literal["truncate", "mask"] = "truncate"
    recompute_old_logprobs: bool = False
    """pi_old comes from the engine for free; True recomputes it with a forward pass (a check)."""
    epochs: int = Field(1, ge=1)
    minibatch_size: int | None = Field(None, ge=1)
    """Rows per optimizer step (None: one step over the whole batch)."""
    micro_batch_size: int = Field(16, ge=1)
    """Rows per forward/backward; gradients accumulate over a minibatch."""
    share_prompt_forward: bool = True
    """Run a group's shared prompt through the model once in the update, and the start all
    prompts of an optimizer step share (system prompt, few-shot turns) once per step (same
    numbers)."""

    @field_validator("advantage")
    @classmethod
    def _check_advantage(cls, value: str) -> str:
        return _one_of("advantage", value, ADVANTAGES.names())

    @field_validator("loss")
    @classmethod
    def _check_loss(cls, value: str) -> str:
        return _one_of("loss", value, POLICY_LOSSES.names())

    @field_validator("agg")
    @classmethod
    def _check_agg(cls, value: str) -> str:
        return _one_of("agg", value, AGG_MODES)

    @field_validator("kl_kind")
    @classmethod
    def _check_kl_kind(cls, value: str) -> str:
        return _one_of("kl_kind", value, [*KL_KINDS, *(f"{k}+" for k in KL_KINDS)])


class OptimConfig(_Section):
    lr: float = Field(1e-5, gt=0)
    """1e-5 suits the 135M demo; the paper uses 1e-6 (Qwen 1.5B) / 2e-6 (Llama) on GPUs."""
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    value_lr: float = Field(1e-4, gt=0)
    """Learning rate of the value head (advantage=gae); it starts from zero, so faster."""


class TrainConfig(_Section):
    steps: int = Field(15, ge=1)
    seed: int = 0
    output_dir: str = "runs/demo"
    overwrite: bool = False
    """Replace an earlier run in output_dir (otherwise a fresh run there is refused)."""
    eval_every: int = Field(5, ge=0)
    """Evaluate every N steps (and before the first and after the last); 0 = never."""
    eval_before: bool = True
    """Evaluate before the first step too (runs that share a start can evaluate it once)."""
    eval_n: int = Field(8, ge=1)
    eval_k: list[int] = Field(default_factory=lambda: [1, 4, 8])
    eval_method: str = "constant"
    eval_params: dict[str, Any] = Field(default_factory=lambda: {"tau": 0.6})
    save_every: int = Field(0, ge=0)
    """Checkpoint every N steps (0 = only the final model)."""
    keep_checkpoints: int = Field(2, ge=1)
    max_bad_steps: int = Field(3, ge=1)
    """Abort after this many consecutive steps with a non-finite loss or gradient."""
    tensorboard: bool = True
    wandb_project: str | None = None
    parallel: Literal["ddp", "fsdp2"] = "ddp"
    """Under torchrun (WORLD_SIZE > 1): ``ddp`` replicates the weights (one gradient
    all-reduce per optimizer step); ``fsdp2`` shards them (``fully_shard`` per layer). Both
    give the same results as one process (``docs/distributed.md``)."""
    dist_timeout_s: float = Field(600.0, gt=0)
    """A rank that waits this long on the others (one died or hangs) fails with an error."""

    @model_validator(mode="after")
    def _check_eval(self) -> TrainConfig:
        bad = [k for k in self.eval_k if k < 1 or k > self.eval_n]
        if bad:
            raise ValueError(f"eval_k: values {bad} must lie in [1, eval_n={self.eval_n}]")
        try:
            validate_method(self.eval_method, self.eval_params)
        except ValueError as error:  # method: ... / params.x: ... -> eval_method / eval_params.x
            where, _, message = str(error).partition(": ")
            key = "eval_method" if where == "method" else f"eval_{where}"
            raise ValueError(f"{key}: {message}") from None
        return self


class Config(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _check_vllm(self) -> Config:
        if self.rollout.backend != "vllm":
            return self
        if self.model.lora_rank > 0:
            raise ValueError(
                "model.lora_rank: rollout.backend vllm syncs full weights, not LoRA adapters; "
                "use rollout.backend=hf with LoRA"
            )
        # Evaluation samples through the training backend: its method must run there too.
        try:
            vllm_spec.check_method(Method(self.train.eval_method, self.train.eval_params))
        except ValueError as error:
            raise ValueError(f"train.eval_{error} (rollout.backend is vllm)") from None
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_error(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc) or "config"
    if first["type"] == "extra_forbidden":
        section = _section_at(first["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else ""
        return f"{key}: unknown key; allowed keys here: {allowed}"
    if first["type"] == "value_error":
        # Our validators say "<field>: <message>"; a field validator's loc already ends in it.
        message = str(first["ctx"]["error"])
        field, _, rest = message.partition(": ")
        if loc and loc[-1] == field:
            return f"{key}: {rest}"
        return f"{key}.{message}" if loc else message
    value = first.get("input")
    return f"{key}: {first['msg']} (got {value!r})"


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


class _Replace(dict):
    """A mapping given whole on the command line (``rollout.params={tau: 1.0}``): it replaces
    the YAML's mapping instead of merging into it, so one-line switches work with any recipe."""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["rollout.method=ead", "optim.lr=2e-6"]`` -> nested dict (values parsed as YAML).

    ``a.b.c=1`` sets one key and keeps the rest of ``a.b``; ``a.b={c: 1}`` replaces ``a.b``.
    """
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{item!r}: overrides look like section.key=value")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict) or isinstance(node, _Replace):
                raise ConfigError(f"{key}: conflicts with an earlier override")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"{key}: {raw!r} is not a YAML value; quote strings") from None
        node[leaf] = _Replace(value) if isinstance(value, dict) else value
    return tree


def _merge(base: dict[str, Any], update: dict[str, Any], where: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if isinstance(value, _Replace):
            out[key] = dict(value)
        elif isinstance(value, dict) and key in out and not isinstance(out[key], dict):
            raise ConfigError(
                f"{path}: the YAML sets it to {out[key]!r}, not a mapping of keys; fix the YAML"
            )
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, f"{path}.")
        else:
            out[key] = value
    return out


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"{key}: given twice (line {line}); keep one")
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def read_yaml(path: Path, source: str = "--config") -> dict[str, Any]:
    """A recipe file as a mapping; one-line errors name ``source`` and the line."""
    if not path.is_file():
        raise ConfigError(f"{source}: file {str(path)!r} does not exist")
    try:
        loaded = yaml.load(path.read_text(), Loader=_StrictLoader)
    except ConfigError as error:
        raise ConfigError(f"{source}: {path}: {error}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: {path}{where} is not valid YAML") from None
    if loaded is None:
        raise ConfigError(f"{source}: {path} is empty; give at least one section, e.g. train:")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{source}: {path} must hold a mapping of sections")
    return loaded


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, source: str = "--config"
) -> Config:
    """Defaults <- YAML file <- overrides, validated once."""
    data = read_yaml(Path(path), source) if path is not None else {}
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_error(error)) from None
