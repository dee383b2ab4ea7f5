"""The run directory: what a run writes there, and how a new run replaces an old one safely.

calmrl deletes only what it wrote (``ARTIFACTS``), never a user's own files beside them: a
directory without those is not a run. ``train.overwrite=true`` moves the earlier run aside
(``.calmrl-previous/``) once the new run's model has loaded, deletes it when the new run has
written its first checkpoint or its final model, and moves it back if the new run fails first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

MARKER = ".calmrl-run"
PREVIOUS = ".calmrl-previous"
# Relative paths or globs of everything a run writes (the demo's plots included).
ARTIFACTS = (
    MARKER,
    "config.yaml",
    "metrics.jsonl",
    "checkpoints",
    "final",
    "tensorboard",
    "evals/step-*.json",
    "plots/training_curves.png",
    "plots/eval_*.json",
    "plots/*_at_k.png",
)


def run_artifacts(run_dir: Path) -> list[Path]:
    return sorted({p for pattern in ARTIFACTS for p in run_dir.glob(pattern)})


def holds_a_run(run_dir: Path) -> bool:
    """A run's marker, metrics or checkpoints are there (a config.yaml alone is not a run)."""
    return any((run_dir / name).exists() for name in (MARKER, "metrics.jsonl", "checkpoints"))


def set_aside_previous_run(run_dir: Path) -> Path | None:
    """Move an earlier run's files into ``.calmrl-previous/``; returns it (None: no earlier run).

    A ``.calmrl-previous`` left by a run that was killed before its first checkpoint still
    holds the last complete run: it is kept, and the killed run's files are dropped.
    """
    previous = run_dir / PREVIOUS
    if previous.exists():
        _remove(run_artifacts(run_dir))
        return previous
    if not holds_a_run(run_dir):
        return None
    for path in run_artifacts(run_dir):
        target = previous / path.relative_to(run_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    return previous


def discard_previous_run(run_dir: Path) -> None:
    shutil.rmtree(run_dir / PREVIOUS, ignore_errors=True)


def restore_previous_run(run_dir: Path) -> None:
    """Undo ``set_aside_previous_run`` after the new run failed before its first checkpoint."""
    previous = run_dir / PREVIOUS
    if not previous.is_dir():
        return
    _remove(run_artifacts(run_dir))
    for path in sorted(p for p in previous.rglob("*") if p.is_file() or p.is_symlink()):
        target = run_dir / path.relative_to(previous)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def mark_run(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).write_text("written by calmrl train; see config.yaml\n")


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
