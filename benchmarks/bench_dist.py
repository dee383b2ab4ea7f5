"""Data parallel on this CPU: ``torchrun --nproc_per_node=2`` x 1 thread vs one process x 2
threads, the same RL steps (the demo's config on SmolLM2-135M, evaluation off).

Runs interleave (A B A B ...) so drifting machine load hits both; reports the median step
time and rollout / update tokens per second from each run's ``metrics.jsonl`` (steps after
the first, which pays for warm-up). Usage::

    python benchmarks/bench_dist.py --steps 3 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, today


def run(nproc: int, threads: int, steps: int, out: Path) -> list[dict]:
    args = ["-m", "calmrl", "train", f"train.output_dir={out}", f"train.steps={steps}",
            "train.eval_every=0", "train.tensorboard=false", "train.overwrite=true"]  # fmt: skip
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    subprocess.run([*launcher, *args], check=True, env=env, timeout=3600,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = {"1 rank x 2 threads": (1, 2), "2 ranks x 1 thread": (2, 1)}
    seen: dict[str, list[dict]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, (nproc, threads) in settings.items():
                lines = run(nproc, threads, args.steps, Path(tmp) / f"{nproc}-{repeat}")
                seen[name] += lines[1:]
    print(f"# {today()}, {machine()}")
    print(f"# python benchmarks/bench_dist.py --steps {args.steps} --repeats {args.repeats}")
    print("| setting | s/step | rollout tokens/s | update tokens/s |")
    print("|---|---|---|---|")
    base = None
    for name, lines in seen.items():
        step = statistics.median(x["time/step"] for x in lines)
        rollout = statistics.median(x.get("perf/rollout_tokens_per_s", 0.0) for x in lines)
        update = statistics.median(x.get("perf/update_tokens_per_s", 0.0) for x in lines)
        base = base or step
        print(f"| {name} | {step:.1f} ({base / step:.2f}x) | {rollout:.0f} | {update:.0f} |")


if __name__ == "__main__":
    main()
