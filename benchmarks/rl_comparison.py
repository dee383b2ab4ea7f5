"""The paper's controlled comparison (EAD Fig. 4) in miniature, on the CPU.

    python benchmarks/rl_comparison.py [--steps 15] [--out runs/comparison] [overrides ...]

Trains the built-in default recipe (``configs/demo.yaml``) with the same seed and budget,
changing one thing: constant temperature 1.0 rollouts, EAD without TIS, EAD with TIS (the
paper's three), and two runs beyond it (PPO-GAE, entropy-clocked EAD); ``--only`` picks some.
Prints a table of held-out pass@k / worst@k before and after, and draws the training curves
of every run found under OUT on shared axes (``OUT/plots/training_curves.png``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, today

from calmrl.analysis.plots import plot_training_runs
from calmrl.config import load_config
from calmrl.rl.trainer import run_training

VARIANTS = {
    "constant-1.0": ["rollout.method=constant", "rollout.params={tau: 1.0}", "algorithm.tis=false"],
    "ead-no-tis": ["rollout.method=ead-paper", "algorithm.tis=false"],
    "ead-tis": ["rollout.method=ead-paper", "algorithm.tis=true"],
    # Beyond the paper's three runs: PPO with GAE (configs/ppo-gae-smollm2.yaml) and EAD on an
    # entropy clock, each with the EAD-TIS run's rollouts and budget otherwise.
    "ppo-gae": ["rollout.method=ead-paper", "algorithm.advantage=gae", "algorithm.lam=0.95"],
    "ead-entropy-tis": ["rollout.method=ead-entropy", "rollout.params={entropy_ref: 0.3}"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--out", default="runs/comparison")
    parser.add_argument("--only", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("overrides", nargs="*", help="extra section.key=value overrides")
    args = parser.parse_args()

    out = Path(args.out)
    rows = []
    for name in args.only:
        overrides = [
            *VARIANTS[name],
            f"train.steps={args.steps}",
            f"train.output_dir={out / name}",
            *args.overrides,
        ]
        config = load_config(None, overrides)
        started = time.perf_counter()
        history = run_training(config)
        rows.append((name, history, time.perf_counter() - started))
    print(f"date: {today()}\nmachine: {machine()}")
    print("command: python benchmarks/rl_comparison.py " + " ".join(sys.argv[1:]))
    ks = load_config(None, []).train.eval_k
    header = ["run", "minutes"] + [f"{m}@{k} before->after" for m in ("pass", "worst") for k in ks]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, history, seconds in rows:
        cells = [name, f"{seconds / 60:.1f}"]
        for metric in ("pass", "worst"):
            for k in ks:
                before = history["before"].metrics[f"{metric}@{k}"]
                after = history["after"].metrics[f"{metric}@{k}"]
                cells.append(
                    f"{before['mean']:.3f} -> {after['mean']:.3f} "
                    f"[{after['lo']:.2f}, {after['hi']:.2f}]"
                )
        print("| " + " | ".join(cells) + " |")
    found = [out / name for name in VARIANTS if (out / name / "metrics.jsonl").is_file()]
    for path in plot_training_runs(found, out / "plots"):
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
