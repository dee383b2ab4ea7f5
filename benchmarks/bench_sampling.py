"""Rollout engine throughput on SmolLM2-135M-Instruct (CPU): EAD vs constant, engine vs HF.

    python benchmarks/bench_sampling.py [--batch 32] [--max-new-tokens 128] [--repeats 3]
                                        [--ignore-eos]

Prints, from one interleaved run:
- EAD wall time / constant-temperature wall time in the calmrl engine (target <= 1.02);
- calmrl tokens/s / ``model.generate`` tokens/s at the same settings (target >= 2.0);
- the machine's fp32 and bf16 matmul rate, measured in the same run, and each run's tokens/s
  as a fraction of the limit it implies (~2 FLOPs per weight per token), and the share of the
  FLOPs that are generated tokens rather than prompt prefill (the most that fraction can be);
- the engine's own gains, each against the engine with one of them undone: in-place KV cache
  (vs HF's growing cache), bucketed prefill (vs one padded forward), the prompts' shared prefix
  prefilled once (vs in every row), freed memory kept in the
  heap (vs glibc's default mmap threshold), the linear kernel ``auto`` picks (vs the other:
  oneDNN on AMD CPUs with AVX-512, PyTorch's default elsewhere);
- the floor the model's kernels set: the engine's exact matmuls (with the model's own weights)
  and attention calls timed alone, the engine / ``generate`` ratio that floor allows and the
  fraction of the fp32 matmul rate an engine at the floor would run at;
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
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

sys.path.insert(0, os.path.dirname(__file__))
from common import alternate, decode_flops_per_token, machine, matmul_gflops, median, today

from calmrl.data import load_problems
from calmrl.data.prompts import format_prompt
from calmrl.models import load_model
from calmrl.models.compat import keep_freed_memory
from calmrl.models.linear_kernel import onednn_available, onednn_linear, resolve_linear_kernel
from calmrl.sampling import generate
from calmrl.sampling.prefill import DEFAULT_TOKEN_BUDGET, buckets, shared_prefix_length
from calmrl.sampling.schedules import PRESETS, ConstantSchedule


def _seconds(run: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return median(times)


@torch.no_grad()
def kernel_floor(
    model: PreTrainedModel,
    lengths: list[int],
    batch: int,
    new_tokens: int,
    linear: Callable[..., torch.Tensor] | None = None,
    shared: int = 0,
) -> dict[str, float]:
    """Seconds the engine's matmuls and attention take alone, at its exact shapes: prefill of
    the ``shared`` prefix on one row, then of the rest in the engine's length-sorted buckets
    (last-position logits only), then ``new_tokens - 1``
    decode steps of ``batch`` rows over a cache of the longest prompt plus the tokens so far.
    Everything else a forward does (norms, RoPE, activations, residuals, Python) and the
    sampling cost nothing here, so ``generate`` time / this floor bounds what any engine built
    on these kernels can reach. ``linear`` is the matmul the engine's linear layers run
    (default ``F.linear``)."""
    linear = linear or F.linear
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers = config.num_hidden_layers
    dtype = head.weight.dtype

    def matmuls(rows: int, head_rows: int) -> float:
        inputs = {m.in_features: torch.randn(rows, m.in_features, dtype=dtype) for m in linears}
        last = torch.randn(head_rows, head.in_features, dtype=dtype)

        def run() -> None:
            for m in linears:
                linear(inputs[m.in_features], m.weight)
            linear(last, head.weight)

        return _seconds(run)

    def attention(rows: int, queries: int, keys: int, masked: bool = True) -> float:
        # The layouts transformers' SDPA path passes on the CPU: one query position with the
        # query heads packed onto their key/value heads; longer queries (prefill, masked)
        # against keys and values repeated to every query head; a prefill with no padding
        # (the shared prefix, one row): causal, unmasked, keys and values not repeated.
        if not masked:
            q = torch.randn(rows, heads, queries, dim, dtype=dtype)
            k, v = (torch.randn(rows, kv_heads, keys, dim, dtype=dtype) for _ in range(2))
            return layers * _seconds(
                lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            )
        if queries == 1:
            q = torch.randn(rows, kv_heads, heads // kv_heads, dim, dtype=dtype)
            kv_shape = (rows, kv_heads, keys, dim)
        else:
            q = torch.randn(rows, heads, queries, dim, dtype=dtype)
            kv_shape = (rows, heads, keys, dim)
        k, v = torch.randn(kv_shape, dtype=dtype), torch.randn(kv_shape, dtype=dtype)
        mask = torch.ones(rows, 1, queries, keys, dtype=torch.bool).tril(keys - queries)
        return layers * _seconds(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    floor = {"prefill matmuls": 0.0, "prefill attention": 0.0}
    if shared:
        floor["prefill matmuls"] += matmuls(shared, 1)
        floor["prefill attention"] += attention(1, shared, shared, masked=False)
    own = [length - shared for length in lengths]
    for bucket in buckets(own, DEFAULT_TOKEN_BUDGET):
        width = max(own[i] for i in bucket)
        floor["prefill matmuls"] += matmuls(len(bucket) * width, len(bucket))
        floor["prefill attention"] += attention(len(bucket), width, shared + width)
    steps, width = new_tokens - 1, max(lengths)
    floor["decode matmuls"] = steps * matmuls(batch, batch)
    # Attention grows linearly with the cache: the mean of its first and last step, per step.
    ends = (attention(batch, 1, width + 1) + attention(batch, 1, width + steps)) / 2
    floor["decode attention"] = steps * ends
    return floor


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

    def engine(
        schedule,
        preallocate_cache=True,
        prefill_tokens=DEFAULT_TOKEN_BUDGET,
        share_prefix=True,
        tuned=True,
        linear_kernel="auto",
    ):
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
                share_prefix=share_prefix,
                linear_kernel=linear_kernel,
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
        "engine constant, no shared prefix": engine(ConstantSchedule(1.0), share_prefix=False),
        "engine constant, glibc default mmap": engine(ConstantSchedule(1.0), tuned=False),
        "HF generate": hf_generate,
    }
    # The linear kernel auto picks on this machine, and the other one for comparison.
    kernel = resolve_linear_kernel("auto", torch.device("cpu"))
    other = "torch" if kernel == "onednn" else "onednn"
    if onednn_available():
        runs[f"engine constant, linear kernel {other}"] = engine(
            ConstantSchedule(1.0), linear_kernel=other
        )
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
        ("no shared prefix", "shared prefix prefilled once / in every row"),
        ("glibc default mmap", "freed memory kept / glibc default"),
        (f"linear kernel {other}", f"linear kernel {kernel} (auto) / {other}"),
    ):
        if f"engine constant, {variant}" not in rate:
            continue
        gain = rate["engine constant"] / rate[f"engine constant, {variant}"]
        print(f"{what} in the engine, tokens/s: {gain:.2f}")
    # The machine's ceiling, measured in the same run: tokens/s as a fraction of it.
    flops = decode_flops_per_token(model)
    # Prefill computes no logits but the last (logits_to_keep=1): all weights but the head's.
    # The engine prefills the prompts' shared prefix once: count the prompt tokens it runs.
    head = model.get_output_embeddings().weight.numel()
    lengths = encoded["attention_mask"].sum(-1).tolist()
    ids = encoded["input_ids"].tolist()  # left-padded
    rows = [row[len(row) - n :] for row, n in zip(ids, lengths, strict=True)]
    shared = shared_prefix_length(rows)
    prompt_tokens = sum(lengths) - (len(rows) - 1) * shared
    work = tokens["engine constant"] * flops + prompt_tokens * (flops - 2 * head)
    generated_share = tokens["engine constant"] * flops / work
    print(
        f"the prompts share a prefix of {shared} tokens, prefilled once: the engine prefills "
        f"{prompt_tokens} of {sum(lengths)} prompt tokens; the generated tokens are "
        f"{generated_share:.1%} of its FLOPs (the rest is prefill): by generated tokens, no "
        f"engine exceeds {generated_share:.1%} of the limit"
    )
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        peak = peaks[dtype] = matmul_gflops(dtype)
        limit = peak * 1e9 / flops
        used = work / median(times["engine constant"]) / (peak * 1e9)
        print(
            f"{dtype}: 2048^3 matmul {peak:.0f} GFLOP/s -> limit {limit:.0f} tokens/s at "
            f"{flops / 1e9:.2f} GFLOP/token; engine constant {rate['engine constant'] / limit:.1%} "
            f"of it, HF generate {rate['HF generate'] / limit:.1%}; counting the prompts' "
            f"prefill FLOPs too, the engine runs at {used:.1%} of the matmul rate"
        )
    linear = onednn_linear if kernel == "onednn" else F.linear
    floor = kernel_floor(model, lengths, len(prompts), args.max_new_tokens, linear, shared)
    total = sum(floor.values())
    engine_s, hf_s = median(times["engine constant"]), median(times["HF generate"])
    parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in floor.items())
    print(
        f"kernels alone at the engine's shapes, linear kernel {kernel} ({parts}): "
        f"floor {total:.2f} s; engine constant "
        f"{engine_s:.2f} s = {engine_s / total:.2f}x the floor; engine / HF generate can reach "
        f"at most {hf_s / total:.2f} with these kernels and nothing else costing time, and "
        f"would run at {work / total / (peaks[torch.float32] * 1e9):.1%} of the fp32 matmul rate"
    )


if __name__ == "__main__":
    main()
