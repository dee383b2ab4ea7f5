"""``calmrl`` command line. Thin: parse, build, call the library, report.

Bad input ends with one line ``error: <field>: <what and how to fix>`` and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from calmrl.cli import analyze, demo, evaluate, sample, train
from calmrl.cli.app import UsageError, app, rank_prefix

__all__ = ["UsageError", "analyze", "app", "demo", "evaluate", "main", "sample", "train"]


def _quiet_libraries() -> None:
    """transformers' deprecation lines and weight-loading bars would break the rich display."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def main() -> None:
    """Console entry point: one-line errors, exit code 2, for bad input."""
    _quiet_libraries()
    try:
        app()
    except (UsageError, ValueError, FileNotFoundError, ImportError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        typer.echo(f"error: {rank_prefix()}{message}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
