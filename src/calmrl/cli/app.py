"""The ``calmrl`` app, its shared option helpers and the one-line error type."""

from __future__ import annotations

from typing import Any

import typer
import yaml

from calmrl.sampling.methods import method_names

METHODS = " | ".join(method_names())

app = typer.Typer(
    help="Exploration for RL with verifiable rewards: EAD, LED, entropy-shaped advantages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class UsageError(ValueError):
    """Bad user input; reported as one line, exit code 2."""


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``["tau_max=1.2", "warmup_tokens=10"]`` -> ``{"tau_max": 1.2, "warmup_tokens": 10}``."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--param: expected key=value, got {pair!r}")
        params[key.strip()] = yaml.safe_load(value)
    return params


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )
