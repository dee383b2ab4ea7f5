"""Everything bad input can break, checked before a model loads or a file is written.

``check_inputs`` turns a config into what the trainer needs (problems, prompt format, reward,
verifier, methods, device) or raises one ``ValueError`` line naming the config key and the
fix. ``calmrl train --check`` runs it, and checks the model source, without training.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from calmrl.config import Config
from calmrl.data import Problem, load_problems
from calmrl.data.prompts import PromptFormat
from calmrl.io import check_writable_dir
from calmrl.models import BUILTIN_MODELS
from calmrl.models.compat import check_device
from calmrl.models.loading import builtin_gguf_path
from calmrl.rewards import RewardFunction, Verifier, evaluation_verifier, get_reward
from calmrl.rl.checkpoint import list_checkpoints
from calmrl.rl.run_dir import holds_a_run
from calmrl.sampling import Method


@dataclass
class Inputs:
    train_problems: list[Problem]
    eval_problems: list[Problem]
    prompt_format: PromptFormat
    reward_fn: RewardFunction
    verifier: Verifier
    method: Method
    eval_method: Method
    device: torch.device


def as_config_error(key: str, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``build``; a bad-input error is re-raised as one line naming the config key."""
    try:
        return build(*args, **kwargs)
    except (ValueError, FileNotFoundError, TypeError, ImportError, RuntimeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{key}: {message}") from None


def check_inputs(cfg: Config, *, resume: bool = False, model_given: bool = False) -> Inputs:
    """``model_given``: the caller passes a model object, so ``model.name`` is not loaded."""
    device = as_config_error("model.device", check_device, cfg.model.device)
    if not model_given:
        check_model_source(cfg.model.name)
    check_output_dir(Path(cfg.train.output_dir), resume=resume, overwrite=cfg.train.overwrite)
    data = cfg.data
    fields = {"question_field": data.question_field, "answer_field": data.answer_field}
    train = as_config_error(
        "data.train", load_problems, data.train, limit=data.train_limit, seed=cfg.train.seed,
        **fields,
    )  # fmt: skip
    if not train:
        raise ValueError(f"data.train: {data.train} holds no problems; give a non-empty dataset")
    evaluation: list[Problem] = []
    if data.eval and cfg.train.eval_every > 0:
        evaluation = as_config_error(
            "data.eval", load_problems, data.eval, limit=data.eval_limit, seed=data.eval_seed,
            **fields,
        )  # fmt: skip
        if not evaluation:
            raise ValueError(f"data.eval: {data.eval} holds no problems; or set data.eval=null")
    prompt_format = as_config_error(
        "data.few_shot",
        PromptFormat.build,
        system=data.system,
        math_suffix=data.math_suffix,
        few_shot=data.few_shot,
    )
    reward_fn = as_config_error("reward", get_reward, cfg.reward.name, **cfg.reward.params)
    rollout = cfg.rollout
    return Inputs(
        train_problems=train,
        eval_problems=evaluation,
        prompt_format=prompt_format,
        reward_fn=reward_fn,
        verifier=evaluation_verifier(reward_fn),
        method=Method(rollout.method, rollout.params, rollout.top_k, rollout.top_p, rollout.min_p),
        eval_method=Method(cfg.train.eval_method, cfg.train.eval_params),
        device=device,
    )


def check_output_dir(path: Path, *, resume: bool, overwrite: bool) -> None:
    """A directory calmrl may write into, and, for a fresh run, one without another run in it."""
    key = "train.output_dir"
    check_writable_dir(path, key)
    if resume and not list_checkpoints(path):
        raise ValueError(
            f"--resume: no complete checkpoint under {path}/checkpoints; a run writes them "
            "every train.save_every steps"
        )
    if not resume and not overwrite and holds_a_run(path):
        raise ValueError(
            f"{key}: {path} already holds a run; continue it with --resume {path}, pick "
            "another output_dir, or set train.overwrite=true"
        )


def check_model_source(name: str, key: str = "model.name") -> str:
    """Where ``model.name`` will load from, without loading it (one line on what is wrong)."""
    if name in BUILTIN_MODELS:
        return f"built-in, from {as_config_error(key, builtin_gguf_path, name)}"
    path = Path(name)
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ValueError(f"{key}: GGUF file {name!r} does not exist")
        return f"GGUF file {path}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{key}: {path} holds no config.json, so no HF model")
        return f"HF directory {path}"
    if path.exists() or name.startswith((".", "/", "~")):
        raise ValueError(f"{key}: {name!r} is not a model directory or .gguf file")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ValueError(
            f"{key}: {name!r} is not local and HF_HUB_OFFLINE=1 forbids the hub; give a "
            f"built-in name ({', '.join(BUILTIN_MODELS)}), a .gguf file or an HF directory"
        )
    return f"hub id {name} (downloads on first use)"


def summary(cfg: Config, inputs: Inputs, model_source: str) -> list[str]:
    """What ``calmrl train --check`` prints for a valid config."""
    rollout = cfg.rollout
    return [
        f"model: {cfg.model.name} ({model_source}) on {inputs.device}",
        f"data: {len(inputs.train_problems)} training problems from {cfg.data.train}; "
        f"{len(inputs.eval_problems)} evaluation problems"
        + (f" from {cfg.data.eval}" if inputs.eval_problems else ""),
        f"rollout: {rollout.method} {rollout.params or ''} via {rollout.backend}, "
        f"{rollout.prompts_per_step} prompts x {rollout.n} per step, "
        f"<= {rollout.max_new_tokens} tokens",
        f"algorithm: {cfg.algorithm.advantage} advantages, {cfg.algorithm.loss} loss, "
        f"TIS {'on' if cfg.algorithm.tis else 'off'}; {cfg.train.steps} steps",
        f"reward: {cfg.reward.name}; output: {cfg.train.output_dir}",
    ]
