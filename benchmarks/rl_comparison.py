"""A controlled RL comparison that can tell methods apart: seeds, a larger held-out set, pairs.

    python benchmarks/rl_comparison.py [--seeds 0 1 2] [--steps 8] [--eval-limit 64]
        [--eval-n 16] [--out runs/comparison] [--only NAME ...] [overrides ...]

Trains the built-in defaults (``configs/demo.yaml`` without its ``autocast: auto``: fp32) once
per variant and seed, changing one thing per variant (EAD Fig. 4, the LED paper's reward
curves, the entropy papers):

- ``constant-1.0``: constant temperature 1.0 rollouts, no TIS (the baseline);
- ``ead-tis``: EAD (``ead-paper``) rollouts with truncated importance sampling;
- ``ead-tis-shaping``: + entropy-shaped advantages (``algorithm.entropy_shaping``);
- ``ead-tis-forking``: + gradient only through the top 20% entropy tokens
  (``algorithm.top_entropy_quantile=0.2``);
- ``led-tis``: LED rollouts (d = 8, k = 8, T = 0.6) with TIS;
- with ``--only``: ``ead-no-tis``, ``ppo-gae``, ``ead-entropy-tis`` (``EXTRA_VARIANTS``).

Every run evaluates the same ``--eval-limit`` held-out problems (``data.eval_seed`` is fixed)
with ``--eval-n`` samples each before and after training. The report gives, per variant, the
mean over seeds of pass@1, pass@n, worst@n and maj@n after training, and the paired
difference to the baseline over (problem, seed) pairs with a 95% bootstrap interval; the
training curves of every run go on shared axes (``OUT/plots/training_curves.png``). A run
whose ``eval_after.json`` exists is not trained again, so an interrupted comparison resumes.
The report is printed and written to ``OUT/comparison.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, today

from calmrl.analysis.plots import plot_training_runs
from calmrl.config import load_config
from calmrl.eval.metrics import bootstrap_ci
from calmrl.eval.runner import EvalResult, per_problem_metrics
from calmrl.io import write_json
from calmrl.rl.trainer import run_training

BASELINE = "constant-1.0"
VARIANTS = {
    BASELINE: ["rollout.method=constant", "rollout.params={tau: 1.0}", "algorithm.tis=false"],
    "ead-tis": ["rollout.method=ead-paper", "algorithm.tis=true"],
    "ead-tis-shaping": [
        "rollout.method=ead-paper",
        "algorithm.tis=true",
        "algorithm.entropy_shaping=true",
    ],
    "ead-tis-forking": [
        "rollout.method=ead-paper",
        "algorithm.tis=true",
        "algorithm.top_entropy_quantile=0.2",
    ],
    "led-tis": [
        "rollout.method=led",
        "rollout.params={depth: 8, top_k: 8, temperature: 0.6}",
        "algorithm.tis=true",
    ],
}
# Beyond the five (name them with --only): EAD without TIS (the paper's third run), PPO with
# GAE and EAD on an entropy clock, each with the EAD + TIS run's rollouts and budget otherwise.
EXTRA_VARIANTS = {
    "ead-no-tis": ["rollout.method=ead-paper", "algorithm.tis=false"],
    "ppo-gae": ["rollout.method=ead-paper", "algorithm.advantage=gae", "algorithm.lam=0.95"],
    "ead-entropy-tis": ["rollout.method=ead-entropy", "rollout.params={entropy_ref: 0.3}"],
}


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / name / f"seed{seed}"


def train_one(name: str, seed: int, args: argparse.Namespace, *, first: bool) -> float:
    """Train one variant at one seed unless its result exists; returns minutes spent. Every
    variant of a seed starts from the same model and evaluates with the same seed, so only the
    ``first`` evaluates before training."""
    path = run_dir(Path(args.out), name, seed)
    if (path / "eval_after.json").is_file():
        return 0.0
    overrides = [
        *{**VARIANTS, **EXTRA_VARIANTS}[name],
        f"train.seed={seed}",
        f"train.steps={args.steps}",
        f"train.eval_every={args.steps}",
        f"train.eval_n={args.eval_n}",
        f"train.eval_k=[1, {args.eval_n}]",
        f"data.eval_limit={args.eval_limit}",
        "train.save_every=0",
        f"train.eval_before={str(first).lower()}",
        f"train.output_dir={path}",
        *args.overrides,
    ]
    started = time.perf_counter()
    history = run_training(load_config(None, overrides))
    if first:
        write_json(path / "eval_before.json", history["before"].to_dict())
    write_json(path / "eval_after.json", history["after"].to_dict())
    return (time.perf_counter() - started) / 60


def load_eval(path: Path) -> EvalResult:
    return EvalResult.from_dict(json.loads(path.read_text()))


def per_problem(result: EvalResult, k: int) -> dict[str, np.ndarray]:
    """pass@1, pass@k, worst@k, maj@k of each problem, in problem-id order."""
    problems = sorted(result.problems, key=lambda p: p.id)
    ones, at_k = per_problem_metrics(problems, 1), per_problem_metrics(problems, k)
    return {
        "pass@1": ones["pass@1"],
        f"pass@{k}": at_k[f"pass@{k}"],
        f"worst@{k}": at_k[f"worst@{k}"],
        f"maj@{k}": at_k[f"maj@{k}"],
    }


def paired_difference(
    variant: list[dict[str, np.ndarray]], baseline: list[dict[str, np.ndarray]], metric: str
) -> tuple[float, float, float]:
    """Mean of variant - baseline over (problem, seed) pairs and its 95% bootstrap interval."""
    diffs = np.concatenate([v[metric] - b[metric] for v, b in zip(variant, baseline, strict=True)])
    return bootstrap_ci(diffs)


def report(out: Path, names: list[str], seeds: list[int], k: int) -> str:
    metrics = ["pass@1", f"pass@{k}", f"worst@{k}", f"maj@{k}"]
    results = {
        name: [per_problem(load_eval(run_dir(out, name, s) / "eval_after.json"), k) for s in seeds]
        for name in names
    }
    before = [per_problem(load_eval(run_dir(out, names[0], s) / "eval_before.json"), k)
              for s in seeds]  # fmt: skip
    lines = [
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), "
        f"{len(before[0]['pass@1'])} held-out problems, n = {k}; after training, mean over "
        "seeds (per-seed values in brackets)",
        "",
        "| run | " + " | ".join(metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
    ]

    def cells(per_seed: list[dict[str, np.ndarray]]) -> list[str]:
        out_cells = []
        for metric in metrics:
            values = [float(r[metric].mean()) for r in per_seed]
            spread = ", ".join(f"{v:.3f}" for v in values)
            out_cells.append(f"{np.mean(values):.3f} [{spread}]")
        return out_cells

    lines.append("| before training | " + " | ".join(cells(before)) + " |")
    for name in names:
        lines.append(f"| {name} | " + " | ".join(cells(results[name])) + " |")
    if BASELINE in results:
        lines += [
            "",
            f"Paired difference to {BASELINE} over (problem, seed) pairs, 95% bootstrap interval:",
            "",
            "| run | " + " | ".join(metrics) + " |",
            "|---" * (len(metrics) + 1) + "|",
        ]
        for name in names:
            if name == BASELINE:
                continue
            row = []
            for metric in metrics:
                mean, lo, hi = paired_difference(results[name], results[BASELINE], metric)
                row.append(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--eval-limit", type=int, default=64)
    parser.add_argument("--eval-n", type=int, default=16)
    parser.add_argument("--out", default="runs/comparison")
    choices = [*VARIANTS, *EXTRA_VARIANTS]
    parser.add_argument("--only", nargs="*", default=list(VARIANTS), choices=choices)
    parser.add_argument("overrides", nargs="*", help="extra section.key=value overrides")
    args = parser.parse_args()

    out = Path(args.out)
    minutes = {}
    for seed in args.seeds:  # seed-major: a partial comparison still pairs every variant
        for i, name in enumerate(args.only):
            minutes[(name, seed)] = train_one(name, seed, args, first=i == 0)
            print(f"{name} seed {seed}: {minutes[(name, seed)]:.1f} min", flush=True)
    text = "\n".join(
        [
            f"date: {today()}",
            f"machine: {machine()}",
            "command: python benchmarks/rl_comparison.py " + " ".join(sys.argv[1:]),
            f"minutes trained this invocation: {sum(minutes.values()):.1f}",
            "",
            report(out, list(args.only), list(args.seeds), args.eval_n),
        ]
    )
    print(text)
    (out / "comparison.md").write_text(text + "\n")
    dirs = [run_dir(out, n, s) for n in args.only for s in args.seeds]
    dirs = [d for d in dirs if (d / "metrics.jsonl").is_file()]
    labels = [f"{d.parent.name} {d.name}" for d in dirs]
    for path in plot_training_runs(dirs, out / "plots", labels=labels):
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
