"""torch.compile of the decode step: its compile time, its step time against eager, and when
(if ever) it amortises.

    .venv/bin/python benchmarks/bench_compile.py [--batch 64] [--prompt 176] [--steps 16]
        [--dtype fp32|bf16] [--threads 2]

The engine decodes on calmrl's in-place cache (``sampling/kv_cache.py``), whose views grow by
one slot a step. ``torch.compile`` wants fixed shapes, so the compiled step runs on
transformers' ``StaticCache`` with ``dynamic=False`` (every step attends over the whole
capacity, the unfilled slots masked), the setting transformers documents for compiled
generation. Three ways, one process, the same random prompts, greedy tokens:

- ``eager``: calmrl's in-place cache, what the engine runs;
- ``eager-static``: ``StaticCache`` without compiling (separates the cache layout's cost
  from the compiler's);
- ``compiled``: ``torch.compile(model, dynamic=False)`` on ``StaticCache``; its first prefill
  and first decode step are the compile, timed apart; a second rollout reuses the compiled
  graphs.

Prints each way's median decode-step time, the compile time, the decode steps after which the
compiled step has paid for its compile (``never`` if it is not faster), and the fraction of
greedy tokens the compiled model picks as eager does. ``--dtype bf16`` runs all three under
bf16 autocast. Results: docs/benchmarks.md section 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from transformers.cache_utils import Cache, StaticCache

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, median, today

from calmrl.models.attention import route_decode_attention
from calmrl.models.loading import DEFAULT_MODEL, load_model
from calmrl.sampling.kv_cache import preallocated_cache


class Rollout(NamedTuple):
    prefill_s: float
    step_s: list[float]  # wall time of each decode step
    tokens: torch.Tensor  # [batch, steps + 1] greedy tokens


def break_even_steps(compile_s: float, eager_step_s: float, compiled_step_s: float) -> float | None:
    """Decode steps after which ``compile_s`` is paid back by the faster compiled step (None:
    the compiled step is not faster, so it never pays)."""
    saved = eager_step_s - compiled_step_s
    return compile_s / saved if saved > 0 else None


def greedy_rollout(
    forward: Callable[..., object], cache: Cache, prompt: torch.Tensor, steps: int, static: bool
) -> Rollout:
    """Prefill ``prompt`` [B, P] (no padding) and decode ``steps`` greedy tokens. ``static``:
    the attention mask spans the cache's whole capacity, as ``StaticCache`` needs."""
    batch, width = prompt.shape
    capacity = width + steps
    mask = torch.zeros(batch, capacity if static else width, dtype=torch.long)
    mask[:, :width] = 1
    started = time.perf_counter()
    out = forward(
        input_ids=prompt,
        attention_mask=mask,
        position_ids=torch.arange(width).expand(batch, -1),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
        **({"cache_position": torch.arange(width)} if static else {}),
    )
    prefill_s = time.perf_counter() - started
    tokens = [out.logits[:, -1].argmax(-1)]
    step_s = []
    for step in range(steps):
        position = width + step
        started = time.perf_counter()
        if static:
            mask[:, position] = 1
            extra = {"cache_position": torch.tensor([position])}
        else:
            mask = torch.cat([mask, mask.new_ones(batch, 1)], 1)
            extra = {}
        out = forward(
            input_ids=tokens[-1][:, None],
            attention_mask=mask,
            position_ids=torch.full((batch, 1), position),
            past_key_values=cache,
            use_cache=True,
            **extra,
        )
        tokens.append(out.logits[:, -1].argmax(-1))
        step_s.append(time.perf_counter() - started)
    return Rollout(prefill_s, step_s, torch.stack(tokens, 1))


@contextlib.contextmanager
def precision(dtype: str) -> Iterator[None]:
    """The engine's settings: its packed decode attention, under bf16 autocast or in fp32."""
    with torch.inference_mode(), route_decode_attention():
        if dtype == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
        else:
            yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=176, help="prompt tokens per row")
    parser.add_argument("--steps", type=int, default=16, help="decode steps per rollout")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps: must be >= 2 (the first compiled step is the compile)")
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.model)
    prompt = torch.randint(100, model.config.vocab_size, (args.batch, args.prompt),
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    capacity = args.prompt + args.steps

    def static_cache() -> StaticCache:
        return StaticCache(config=model.config, max_cache_len=capacity)

    compiled = torch.compile(model, dynamic=False)
    with precision(args.dtype):
        eager = greedy_rollout(model, preallocated_cache(model, capacity), prompt, args.steps,
                               static=False)  # fmt: skip
        eager_static = greedy_rollout(model, static_cache(), prompt, args.steps, static=True)
        first = greedy_rollout(compiled, static_cache(), prompt, args.steps, static=True)
        warm = greedy_rollout(compiled, static_cache(), prompt, args.steps, static=True)

    eager_step, warm_step = median(eager.step_s), median(warm.step_s)
    # The compile: the first rollout's prefill and first step, over what the warm ones take.
    compile_s = first.prefill_s - warm.prefill_s + first.step_s[0] - warm_step
    print(f"date: {today()}")
    print(f"machine: {machine()}")
    print(
        f"{args.model}: batch {args.batch}, {args.prompt} prompt tokens, {args.steps} decode "
        f"steps, {args.dtype}"
    )
    print("| way | prefill s | median decode step ms |")
    print("|---|---|---|")
    for name, run in (("eager", eager), ("eager-static", eager_static), ("compiled", warm)):
        print(f"| {name} | {run.prefill_s:.2f} | {median(run.step_s) * 1e3:.1f} |")
    print(f"compile (first prefill + first step over the warm ones): {compile_s:.1f} s")
    print(f"compiled / eager decode step: {warm_step / eager_step:.2f}")
    steps = break_even_steps(compile_s, eager_step, warm_step)
    print("compile amortised after: " + (f"{steps:.0f} decode steps" if steps else "never"))
    agree = (warm.tokens == eager.tokens).float().mean().item()
    print(f"greedy tokens equal to eager: {agree:.1%}")


if __name__ == "__main__":
    main()
