"""PNG plots: training curves of several runs on shared axes, and eval curves vs k."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullLocator

from calmrl.rl.run_logger import read_metrics

TRAINING_PANELS = (
    ("reward/mean", "reward"),
    ("reward/accuracy", "train accuracy"),
    ("eval/pass@", "eval pass@k (largest k)"),
    ("eval/worst@", "eval worst@k (largest k)"),
    ("actor/entropy", "policy entropy"),
    ("response/length_mean", "response length"),
)


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    if key.endswith("@"):  # pick the largest k logged
        ks = sorted({int(k.split("@")[1]) for r in records for k in r if k.startswith(key)})
        if not ks:
            return [], []
        key = f"{key}{ks[-1]}"
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_runs(
    run_dirs: Sequence[Path], output: Path, *, labels: Sequence[str] | None = None
) -> list[Path]:
    """Training curves of several runs on shared axes; ``labels`` default to the folder names."""
    output.mkdir(parents=True, exist_ok=True)
    names = labels if labels is not None else [Path(d).name for d in run_dirs]
    runs = {name: read_metrics(d) for name, d in zip(names, run_dirs, strict=True)}
    figure, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for axis, (key, title) in zip(axes.flat, TRAINING_PANELS, strict=True):
        for name, records in runs.items():
            steps, values = _series(records, key)
            if steps:
                axis.plot(steps, values, marker="o", markersize=3, label=name)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    path = output / "training_curves.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [path]


def plot_eval_results(
    files: Sequence[Path], output: Path, *, title: str | None = None, prefix: str = ""
) -> list[Path]:
    """pass@k, worst@k and maj@k against k, one line (with its 95% CI band) per result file.

    Writes ``<prefix>pass_at_k.png``, ``<prefix>worst_at_k.png`` and ``<prefix>maj_at_k.png``.
    """
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for file in files:
        data = json.loads(Path(file).read_text())
        label = data.get("method") or Path(file).stem
        results.append((label, data))
    paths = []
    for metric in ("pass", "worst", "maj"):
        figure, axis = plt.subplots(figsize=(5.5, 4))
        for label, data in results:
            ks = sorted(data["ks"])
            values = [data["metrics"][f"{metric}@{k}"] for k in ks]
            axis.plot(ks, [v["mean"] for v in values], marker="o", label=label)
            axis.fill_between(ks, [v["lo"] for v in values], [v["hi"] for v in values], alpha=0.15)
        axis.set_xscale("log", base=2)
        ticks = sorted({k for _, data in results for k in data["ks"]})
        axis.set_xticks(ticks, [str(k) for k in ticks])
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xlabel("k" if metric != "maj" else "N")
        axis.set_ylabel(f"{metric}@k" if metric != "maj" else "Maj@N")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        if title:
            axis.set_title(title, fontsize=9)
        figure.tight_layout()
        path = output / f"{prefix}{metric}_at_k.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths
