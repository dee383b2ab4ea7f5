"""Run metrics: one JSONL line per step, plus TensorBoard and Weights & Biases when enabled;
and what the console shows while a run goes (a spinner naming the phase, a line per step)."""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from calmrl.io import atomic_open

TENSORBOARD_MISSING = (
    "note: tensorboard is not installed, so no TensorBoard events (pip install tensorboard, "
    "or train.tensorboard=false); metrics.jsonl has every metric"
)


class RunLogger:
    """Appends ``metrics.jsonl``; on resume, drops lines past the checkpoint's step."""

    def __init__(
        self,
        run_dir: Path,
        *,
        resume_step: int | None = None,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled  # under torchrun rank 0 alone writes
        self._tb = None
        self._wandb = None
        self.tensorboard_missing = False
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            with atomic_open(self.path) as handle:
                handle.writelines(json.dumps(record) + "\n" for record in kept)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is an optional extra
                self.tensorboard_missing = True
        if wandb_project:
            import wandb  # optional; a clear ImportError names the package

            self._wandb = wandb.init(project=wandb_project, dir=str(run_dir), config=config)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (``path``: the file or its run directory).

    A last line cut short (a full disk, a kill mid-write) is dropped with a warning; a broken
    line before the last is an error naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"run: {path.parent} has no metrics.jsonl (is it a calmrl run?)")
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not a JSON record") from None
            warnings.warn(f"{path}: dropping a cut-off last line", stacklevel=2)
    return records


# What the console shows of each step (metrics.jsonl has everything).
_SHOWN = {
    "reward/mean": "reward",
    "reward/accuracy": "acc",
    "response/length_mean": "len",
    "tis/mean": "tis_w",
    "actor/entropy": "entropy",
    "time/step": "s/step",
}


def step_line(step: int, steps: int, metrics: dict[str, Any], eta_s: float = 0.0) -> str:
    parts = [f"step {step}/{steps}"]
    parts += [f"{label} {metrics[key]:.3f}" for key, label in _SHOWN.items() if key in metrics]
    parts += [
        f"{key.removeprefix('eval/')} {value:.3f}"
        for key, value in metrics.items()
        if key.startswith(("eval/pass@", "eval/worst@"))
    ]
    if metrics.get("nonfinite"):
        parts.append("skipped: non-finite")
    if eta_s > 0:
        parts.append(f"eta {int(eta_s // 60)}m{int(eta_s % 60):02d}s")
    return "  ".join(parts)


class RunConsole:
    """A rich console's view of a run; every method is a no-op without a console."""

    def __init__(self, console: Any, steps: int):
        self.console, self.steps = console, steps
        self._live: tuple[Any, str] | None = None
        self._step_seconds: list[float] = []

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A live spinner; ``phase`` replaces the text after its first ``:``."""
        if self.console is None:
            yield
            return
        with self.console.status(message) as spinner:
            self._live = (spinner, message.partition(":")[0])
            try:
                yield
            finally:
                self._live = None

    def phase(self, text: str) -> None:
        if self._live is not None:
            spinner, head = self._live
            spinner.update(f"{head}: {text}")

    def report(self, step: int, metrics: dict[str, Any]) -> None:
        self._step_seconds.append(metrics.get("time/step", 0.0))
        eta = (self.steps - step) * sum(self._step_seconds) / len(self._step_seconds)
        self.note(step_line(step, self.steps, metrics, eta))

    def note(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, soft_wrap=True, highlight=False)
