"""``calmrl demo``."""

from __future__ import annotations

from typing import Annotated

import typer

from calmrl.cli.app import app
from calmrl.models import DEFAULT_MODEL


@app.command()
def demo(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides of the demo config.")
    ] = None,
    sampling_only: Annotated[
        bool, typer.Option(help="Only compare EAD and constant-temperature samples.")
    ] = False,
) -> None:
    """The main job on the built-in default: a short GRPO + EAD + TIS run on the CPU."""
    from calmrl.demo import run_sampling_demo, run_training_demo

    if sampling_only:
        run_sampling_demo(model=DEFAULT_MODEL)
    else:
        run_training_demo(overrides)
