"""What bf16 autocast does to rollout speed and to the TIS ratio, beside fp32, in one run.

    python benchmarks/bench_precision.py [--batch 64] [--max-new-tokens 64] [--threads 2]

For each precision (fp32; bf16 autocast over fp32 master weights, as ``model.autocast:
bfloat16`` runs): sample ``--batch`` GSM8K rollouts at tau = 1 (so pi_old and mu are the same
distribution and every deviation of the ratio from 1 is numerical), time them, then recompute
pi_old with the update's forward (``rl.forward.response_logprobs``) and report the per-token
ratio ``w = pi_old / mu``: mean, max, max |log w|, and the fraction above the TIS cap 2. The
"mixed" row scores bf16 rollouts with an fp32 update: what a run gets when the two disagree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, today

from calmrl.data import load_problems
from calmrl.data.prompts import format_prompt
from calmrl.models import load_model
from calmrl.models.compat import cpu_flags
from calmrl.rl.forward import response_logprobs
from calmrl.sampling import generate
from calmrl.sampling.schedules import ConstantSchedule

TIS_CAP = 2.0


def precision(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    questions = [p.question for p in load_problems("gsm8k", limit=args.batch)]
    prompts = [format_prompt(tokenizer, q) for q in questions]

    rollouts, seconds = {}, {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with precision(dtype):
            generate(model, tokenizer, prompts[:2], ConstantSchedule(1.0), max_new_tokens=4)
            started = time.perf_counter()
            rollouts[name] = generate(
                model, tokenizer, prompts, ConstantSchedule(1.0),
                max_new_tokens=args.max_new_tokens, seed=0, ignore_eos=True,
            )  # fmt: skip
            seconds[name] = time.perf_counter() - started

    print(f"date: {today()}\nmachine: {machine()}")
    print(f"command: python benchmarks/bench_precision.py {' '.join(sys.argv[1:])}")
    print(f"model {args.model}, {args.batch} GSM8K prompts x {args.max_new_tokens} tokens, tau 1")
    print("| rollout | update | tokens/s | mean w | max w | max abs log w | w > 2 |")
    print("|---|---|---|---|---|---|---|")
    for rollout, update, dtype in (
        ("fp32", "fp32", None),
        ("bf16", "bf16", torch.bfloat16),
        ("bf16", "fp32", None),
    ):
        r = rollouts[rollout]
        with torch.no_grad(), precision(dtype):
            old = response_logprobs(model, r).logprobs
        on = r.response_mask.bool()
        log_w = (old - r.behaviour_logprobs)[on].double()
        w = log_w.exp()
        rate = int(on.sum()) / seconds[rollout]
        print(
            f"| {rollout} | {update} | {rate:.1f} | {w.mean():.5f} | {w.max():.4f} | "
            f"{log_w.abs().max():.2e} | {(w > TIS_CAP).double().mean():.2%} |"
        )
    print(f"bf16 / fp32 rollout tokens/s: {seconds['fp32'] / seconds['bf16']:.2f}")
    flags = cpu_flags()
    print(f"AMX-BF16: {'amx_bf16' in flags}, AVX512-BF16: {'avx512_bf16' in flags}")


if __name__ == "__main__":
    main()
