"""The update's policy forward + backward on one demo step's rollouts: what prompt sharing buys.

    .venv/bin/python benchmarks/bench_update.py [--config configs/demo.yaml] [--micro-batch 16]

Samples one step of the recipe's rollouts (its prompts, G, max_new_tokens, rollout method and
precision: ``model.autocast: auto`` as ``calmrl demo`` runs), then times
``rl.forward.response_logprobs`` with a backward over every micro-batch of the step, in
three ways, interleaved (``--repeats`` rounds, medians):

- ``plain``: every row runs prompt + response (``share_prompts=False``);
- ``group``: a group's prompt runs once, its KV cache indexed out to the G rows (no
  ``prefix``);
- ``prefix`` (the default): as ``group``, and the start all the step's prompts share (the
  system prompt, few-shot turns) runs once per step (``rl.forward.shared_prefix``), one
  forward without a graph, then one with its backward, for all micro-batches.

Each micro-batch's forward casts the weights to bf16 itself (``PolicyUpdate`` casts them once
per step), so the times isolate what the prompt sharing buys. Prints the prompt tokens each
way runs per step, the wall times and the ratios, with the machine. Results:
docs/benchmarks.md section 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import alternate, machine, median, today

from calmrl.config import load_config
from calmrl.rl.forward import response_logprobs, shared_prefix
from calmrl.rl.trainer import Trainer
from calmrl.sampling.prefill import shared_prefix_length
from calmrl.sampling.rollouts import Rollouts

WAYS = {  # (share_prompts, share_prefix)
    "plain": (False, False),
    "group": (True, False),
    "prefix": (True, True),
}


def micro_batches(rollouts: Rollouts, size: int) -> list[Rollouts]:
    return [
        rollouts.select(list(range(i, min(i + size, len(rollouts)))))
        for i in range(0, len(rollouts), size)
    ]


def prompt_tokens(micros: list[Rollouts], way: str) -> int:
    """Prompt tokens the forward runs in a step (padding of each trimmed micro-batch too)."""
    prompts = [
        [ids[keep].tolist() for ids, keep in zip(m.prompt_ids, m.prompt_mask.bool(), strict=True)]
        for m in micros
    ]
    if way == "plain":
        return sum(len(rows) * max(map(len, rows)) for rows in prompts)
    groups = [
        [rows[i] for i in {int(g): i for i, g in enumerate(m.group_index)}.values()]
        for rows, m in zip(prompts, micros, strict=True)
    ]
    shared = (
        shared_prefix_length([row for rows in groups for row in rows]) if way == "prefix" else 0
    )
    # The prefix runs twice: once for its keys and values, once more for its backward.
    return 2 * shared + sum(len(rows) * (max(map(len, rows)) - shared) for rows in groups)


def update_step(
    model: torch.nn.Module,
    rollouts: Rollouts,
    micros: list[Rollouts],
    autocast: Callable[[], contextlib.AbstractContextManager],
    share_prompts: bool,
    share_prefix: bool,
) -> None:
    """The update's forward + backward over every micro-batch of a step (no optimizer step)."""
    with autocast():
        prefix = shared_prefix(model, rollouts) if share_prefix else None
    for micro in micros:
        with autocast():
            out = response_logprobs(model, micro, share_prompts=share_prompts, prefix=prefix)
        ((out.logprobs + out.entropy) * micro.response_mask).sum().backward()
    if prefix is not None:
        prefix.backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--micro-batch", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--ways", default=",".join(WAYS), help="comma-separated subset of: " + ", ".join(WAYS)
    )
    args = parser.parse_args()
    ways = {way: WAYS[way] for way in args.ways.split(",")}
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as output_dir:
        overrides = [f"train.output_dir={output_dir}", "train.tensorboard=false"]
        trainer = Trainer(load_config(args.config, overrides))
        rollouts = trainer.sample_and_score({"time/rollout": 0.0, "time/reward": 0.0}).rollouts
    size = args.micro_batch or trainer.config.algorithm.micro_batch_size
    micros = micro_batches(rollouts, size)
    model = trainer.model.train()

    times, _, peaks = alternate(
        {
            way: (
                lambda shares=shares: update_step(
                    model, rollouts, micros, trainer._autocast, *shares
                )
            )
            for way, shares in ways.items()
        },
        args.repeats,
    )
    response_tokens = int(rollouts.response_mask.sum())
    print(f"date: {today()}")
    print(f"machine: {machine()}")
    print(
        f"{args.config}: {len(rollouts)} rows, {size} per micro-batch, {response_tokens} response "
        f"tokens, autocast {trainer.config.model.autocast}, repeats {args.repeats} (interleaved)"
    )
    print("| way | prompt tokens run | median s (forward + backward) | peak RSS GiB |")
    print("|---|---|---|---|")
    for way in ways:
        tokens = prompt_tokens(micros, way)
        print(f"| {way} | {tokens} | {median(times[way]):.2f} | {peaks[way]:.2f} |")
    for faster, slower, what in (
        ("prefix", "group", "shared prefix once / a group's prompt once"),
        ("group", "plain", "a group's prompt once / plain"),
    ):
        if faster in times and slower in times:
            ratio = median(times[slower]) / median(times[faster])
            print(f"{what}, speed-up: {ratio:.2f}")


if __name__ == "__main__":
    main()
