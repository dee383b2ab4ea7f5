"""Rollout engine throughput on SmolLM2-135M-Instruct (CPU): EAD vs constant, engine vs HF.

    python benchmarks/bench_sampling.py [--batch 32] [--max-new-tokens 128] [--repeats 3]
                                        [--ignore-eos]

Prints, from one interleaved run:
- EAD wall time / constant-temperature wall time in the calmrl engine (target <= 1.02);
- calmrl tokens/s / ``model.generate`` tokens/s at the same settings (target >= 2.0);
- the machine's fp32 and bf16 matmul rate, measured in the same run, and each run's tokens/s
  as a fraction of the limit it implies (~2 FLOPs per weight per token);
- the engine's own gains, each against the engine with one of them undone: in-place KV cache
  (vs HF's growing cache), bucketed prefill (vs one padded forward), freed memory kept in the
  heap (vs glibc's default mmap threshold);
- peak resident memory of each.
Tokens are generated tokens (EOS included, padding excluded); both stop rows at EOS, so the
runs differ in how many tokens they generate. ``--ignore-eos`` runs every row to
``max_new_tokens`` in all three (HF: ``min_new_tokens``), so the work is equal and the ratios
isolate per-step costs.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import alternate, decode_flops_per_token, machine, matmul_gflops, median, today

from calmrl.data import load_problems
from calmrl.data.prompts import format_prompt
from calmrl.models import load_model
from calmrl.models.compat import keep_freed_memory
from calmrl.sampling import generate
from calmrl.sampling.prefill import DEFAULT_TOKEN_BUDGET
from calmrl.sampling.schedules import PRESETS, ConstantSchedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--ignore-eos", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load_model(args.model)
    questions = [p.question for p in load_problems("gsm8k", limit=args.batch)]
    prompts = [format_prompt(tokenizer, q) for q in questions]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    eos = tokenizer.eos_token_id

    def engine(schedule, preallocate_cache=True, prefill_tokens=DEFAULT_TOKEN_BUDGET, tuned=True):
        def run():
            keep_freed_memory(tuned)
            r = generate(
                model,
                tokenizer,
                prompts,
                schedule,
                max_new_tokens=args.max_new_tokens,
                seed=0,
                ignore_eos=args.ignore_eos,
                preallocate_cache=preallocate_cache,
                prefill_tokens=prefill_tokens,
            )
            keep_freed_memory(True)
            return int(r.response_mask.sum())

        return run

    @torch.no_grad()
    def hf_generate():
        torch.manual_seed(0)
        out = model.generate(
            **encoded,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.max_new_tokens if args.ignore_eos else 0,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out[:, encoded["input_ids"].shape[1] :]
        if args.ignore_eos:
            return new.numel()
        # Count tokens up to and including the first EOS, as the engine does.
        after_eos = (new == eos).long().cumsum(-1) - (new == eos).long()
        return int((after_eos == 0).sum())

    runs = {
        "engine constant": engine(ConstantSchedule(1.0)),
        "engine EAD": engine(PRESETS["ead-paper"]),
        "engine constant, HF DynamicCache": engine(ConstantSchedule(1.0), preallocate_cache=False),
        "engine constant, one padded prefill": engine(ConstantSchedule(1.0), prefill_tokens=10**9),
        "engine constant, glibc default mmap": engine(ConstantSchedule(1.0), tuned=False),
        "HF generate": hf_generate,
    }
    engine(ConstantSchedule(1.0))()  # warm-up: allocator, kernels
    times, tokens, peaks = alternate(runs, args.repeats)

    print(f"date: {today()}\nmachine: {machine()}")
    print(
        f"model {args.model}, batch {args.batch}, max_new_tokens {args.max_new_tokens}, "
        f"repeats {args.repeats} (interleaved), medians"
    )
    print("| run | median wall s | tokens | tokens/s | peak RSS GiB |\n|---|---|---|---|---|")
    rate = {}
    for name in runs:
        wall = median(times[name])
        rate[name] = tokens[name] / wall
        print(f"| {name} | {wall:.2f} | {tokens[name]} | {rate[name]:.1f} | {peaks[name]:.2f} |")
    ead_ratio = median(times["engine EAD"]) / median(times["engine constant"])
    # EAD samples different lengths; per-token time is the fair comparison of the schedule cost.
    ead_per_token = (median(times["engine EAD"]) / tokens["engine EAD"]) / (
        median(times["engine constant"]) / tokens["engine constant"]
    )
    print(
        f"EAD / constant wall time: {ead_ratio:.3f} "
        f"(per token: {ead_per_token:.3f}; target <= 1.02)"
    )
    print(
        f"engine / HF generate tokens/s: {rate['engine constant'] / rate['HF generate']:.2f} "
        "(target >= 2.0)"
    )
    for variant, what in (
        ("HF DynamicCache", "in-place KV cache / HF DynamicCache"),
        ("one padded prefill", "bucketed prefill / one padded prefill"),
        ("glibc default mmap", "freed memory kept / glibc default"),
    ):
        gain = rate["engine constant"] / rate[f"engine constant, {variant}"]
        print(f"{what} in the engine, tokens/s: {gain:.2f}")
    # The machine's ceiling, measured in the same run: tokens/s as a fraction of it.
    flops = decode_flops_per_token(model)
    # Prefill computes no logits but the last (logits_to_keep=1): all weights but the head's.
    head = model.get_output_embeddings().weight.numel()
    work = tokens["engine constant"] * flops + int(encoded["attention_mask"].sum()) * (
        flops - 2 * head
    )
    for dtype in (torch.float32, torch.bfloat16):
        peak = matmul_gflops(dtype)
        limit = peak * 1e9 / flops
        used = work / median(times["engine constant"]) / (peak * 1e9)
        print(
            f"{dtype}: 2048^3 matmul {peak:.0f} GFLOP/s -> limit {limit:.0f} tokens/s at "
            f"{flops / 1e9:.2f} GFLOP/token; engine constant {rate['engine constant'] / limit:.1%} "
            f"of it, HF generate {rate['HF generate'] / limit:.1%}; counting the prompts' "
            f"prefill FLOPs too, the engine runs at {used:.1%} of the matmul rate"
        )


if __name__ == "__main__":
    main()
