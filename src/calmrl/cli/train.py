"""``calmrl train``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from calmrl.cli.app import UsageError, app, rank_prefix


@app.command(context_settings={"allow_extra_args": False})
def train(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="section.key=value overrides, e.g. optim.lr=2e-6 rollout.params='{tau: 1.0}' "
            "(a mapping replaces the recipe's). Every key, its default and its meaning: "
            "src/calmrl/config.py, or the config.yaml a run writes."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML recipe (see configs/).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue the run in this directory from its checkpoint."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Validate config, data, reward, model source, device and output "
            "directory, print a summary and exit, without training.",
        ),
    ] = False,
) -> None:
    """Train with RLVR: EAD/LED rollouts, GRPO/DAPO losses, TIS, entropy shaping.

    SIGTERM or Ctrl-C finishes the step, writes a checkpoint and exits non-zero (continue with
    --resume DIR).
    """
    from rich.console import Console

    from calmrl.config import load_config

    if resume is not None:
        if config is not None:
            raise UsageError("--resume: the run's saved config.yaml is used; drop --config")
        if not resume.is_dir():
            raise UsageError(f"--resume: {resume} is not a directory; give an earlier run's dir")
        if not (resume / "config.yaml").is_file():
            raise UsageError(f"--resume: {resume} holds no config.yaml, so it is no calmrl run")
        cfg = load_config(
            resume / "config.yaml",
            [*(overrides or []), f"train.output_dir={resume}"],
            source="--resume",
        )
    else:
        cfg = load_config(config, overrides or [])
    # Under torchrun, rank 0 alone talks to the terminal.
    console = Console() if os.environ.get("RANK", "0") == "0" else None
    if check:
        console = console or Console()
        from calmrl.preflight import check_inputs, check_model_source, summary

        inputs = check_inputs(cfg, resume=resume is not None)
        for line in summary(cfg, inputs, check_model_source(cfg.model.name)):
            console.print(line, soft_wrap=True, highlight=False)
        console.print("[green]ok[/]: the run can start")
        return
    from calmrl.rl.trainer import TrainingAborted, TrainingInterrupted, run_training

    if console is not None:
        console.print(f"[bold]calmrl train[/] -> {cfg.train.output_dir}", soft_wrap=True)
    try:
        history = run_training(cfg, resume=resume is not None, console=console)
    except TrainingInterrupted as stop:
        typer.echo(f"error: {rank_prefix()}{stop}", err=True)
        sys.exit(128 + stop.signal)
    except TrainingAborted as error:
        typer.echo(f"error: {rank_prefix()}{error}", err=True)
        sys.exit(1)
    if console is not None:
        _print_run_summary(console, cfg.train.output_dir, history)


def _print_run_summary(console: Any, run_dir: str, history: dict[str, Any]) -> None:
    if not history:
        return
    after = history.get("after")
    if after is not None:
        shown = ", ".join(
            f"{name} {value['mean']:.3f}"
            for name, value in after.metrics.items()
            if name.startswith(("pass@", "worst@", "maj@"))
        )
        console.print(f"final evaluation: {shown}", soft_wrap=True)
    console.print(
        f"model: {run_dir}/final (from_pretrained); metrics: {run_dir}/metrics.jsonl; "
        f"curves: calmrl plot {run_dir}",
        soft_wrap=True,
    )
