"""The run directory: what a run writes there, and when a new run may take it over."""

from __future__ import annotations

import shutil
from pathlib import Path

RUN_ARTIFACTS = ("metrics.jsonl", "checkpoints", "evals", "final", "tensorboard", "plots")


def claim_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """A fresh run must not mix its metrics and checkpoints with an earlier one's."""
    artifacts = [run_dir / name for name in RUN_ARTIFACTS]
    if not any(path.exists() for path in artifacts):
        return
    if not overwrite:
        raise ValueError(
            f"train.output_dir: {run_dir} already holds a run; continue it with "
            f"--resume {run_dir}, pick another output_dir, or set train.overwrite=true"
        )
    for path in artifacts:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
