"""Inference-time scaling: sampling methods side by side on a small model.

    flock /tmp/calmrl-heavy.lock python benchmarks/study_inference.py \\
        [--task arith-add-2 --task-limit 40 --task-tokens 48] \\
        [--gsm8k-limit 8 --gsm8k-tokens 160] [-n 16] [--out docs/results] \\
        [--methods T0.6=constant:tau=0.6 led --pairs led-T0.6 --name led]

The default methods and pairs are EAD against fixed temperatures (the paper's Fig. 9); the
LED study (LED against T = 0.6, the LED paper's Table 1) passes ``--methods``/``--pairs``.

For each setting (a built-in task with its 2-shot prompt; GSM8K test zero-shot with the
``\\boxed{}`` instruction) it samples n responses per problem with every method, on the same
problems with the same seed, and prints pass@k, worst@k and Maj@N with 95% bootstrap CIs as
markdown tables. GSM8K is graded twice from the same samples: strict (``\\boxed{}`` only) and
with the last-number fallback. Plots go to ``<out>/inference_<setting>_{pass,worst,maj}_at_k.png``
and the result JSONs to ``--json-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, today

from calmrl.analysis.plots import plot_eval_results
from calmrl.data import few_shot_examples, load_problems
from calmrl.data.prompts import MATH_SUFFIX, format_prompt
from calmrl.eval.compare import (
    MethodSpec,
    compare_methods,
    default_ks,
    format_ci,
    parse_method_specs,
    write_result,
)
from calmrl.eval.metrics import bootstrap_ci
from calmrl.eval.runner import EvalResult, per_problem_metrics, rescore
from calmrl.models import load_model
from calmrl.rewards import MathVerifier
from calmrl.sampling import HFBackend

METHODS = [
    "T0.6=constant:tau=0.6",
    "T1.0=constant:tau=1.0",
    "T1.2=constant:tau=1.2",
    "ead-paper",  # tau_max 1.2, tau_min 0.1, d 25: the paper's inference-time setting
    "ead-official",  # the same with the released code's x20 time scale
]
PAIRS = [f"{e}-{c}" for e in ("ead-paper", "ead-official") for c in ("T0.6", "T1.0", "T1.2")]


def markdown_table(results: list[EvalResult], metric: str) -> str:
    ks = results[0].ks
    head = f"| {metric}@k | " + " | ".join(str(k) for k in ks) + " |"
    rule = "|---|" + "---:|" * len(ks)
    rows = [
        f"| {r.method} | " + " | ".join(format_ci(r.metrics[f"{metric}@{k}"]) for k in ks) + " |"
        for r in results
    ]
    return "\n".join([head, rule, *rows])


def parse_pairs(pairs: list[str], labels: list[str]) -> list[tuple[str, str]]:
    """``"led-T0.6"`` -> ``("led", "T0.6")``: the split that leaves two known labels."""
    parsed = []
    for pair in pairs:
        splits = [
            (pair[:i], pair[i + 1 :])
            for i, char in enumerate(pair)
            if char == "-" and pair[:i] in labels and pair[i + 1 :] in labels
        ]
        if len(splits) != 1:
            raise SystemExit(f"error: --pairs {pair!r}: write A-B with A, B among {labels}")
        parsed.append(splits[0])
    return parsed


def paired_table(results: list[EvalResult], pairs: list[tuple[str, str]], seed: int) -> str:
    """Each method minus its baseline, per problem, with a paired bootstrap CI.

    The methods ran on the same problems, so the per-problem differences cancel most of the
    problem-to-problem spread that makes the unpaired intervals wide.
    """
    top = max(results[0].ks)
    names = ["pass@1", f"pass@{top}", f"worst@{top}", f"maj@{top}"]
    by_label = {r.method: r for r in results}
    per_problem = {
        label: {**per_problem_metrics(r.problems, 1), **per_problem_metrics(r.problems, top)}
        for label, r in by_label.items()
    }
    lines = ["| difference | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for method, baseline in pairs:
        cells = []
        for name in names:
            diff = per_problem[method][name] - per_problem[baseline][name]
            mean, lo, hi = bootstrap_ci(diff, seed=seed)
            cells.append(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append(f"| {method} - {baseline} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def title_of(description: str, results: list[EvalResult]) -> str:
    first = results[0]
    tokens = first.config["max_new_tokens"]
    return f"{description}, {len(first.problems)} problems x {first.n}, {tokens} tokens"


def save(name: str, results: list[EvalResult], specs: list[MethodSpec], json_dir: Path) -> None:
    for spec, result in zip(specs, results, strict=True):
        write_result(result, spec, json_dir / name)


def load(name: str, specs: list[MethodSpec], json_dir: Path) -> list[EvalResult]:
    files = [json_dir / name / f"{spec.file_stem}.json" for spec in specs]
    return [EvalResult.from_dict(json.loads(f.read_text())) for f in files]


def report(name: str, description: str, args: argparse.Namespace) -> None:
    """Tables and plots of one setting, from its result files."""
    results = load(name, args.specs, args.json_dir)
    title = title_of(description, results)
    print(f"\n### {title}\n")
    if any(value["mean"] > 0 for r in results for value in r.metrics.values()):
        files = [args.json_dir / name / f"{spec.file_stem}.json" for spec in args.specs]
        plot_eval_results(files, args.out, title=title, prefix=f"{args.name}_{name}_")
    else:
        print("every metric is 0: no plots")
    lengths = {r.method: sum(p.mean_length for p in r.problems) / len(r.problems) for r in results}
    print(
        "mean tokens: "
        + ", ".join(f"{m} {v:.1f}" for m, v in lengths.items())
        + "; seconds: "
        + ", ".join(f"{r.method} {r.config['seconds']:.0f}" for r in results)
    )
    for metric in ("pass", "worst", "maj"):
        print()
        print(markdown_table(results, metric))
    print()
    print(paired_table(results, parse_pairs(args.pairs, [s.label for s in args.specs]), args.seed))
    sys.stdout.flush()


def run_setting(
    model, tokenizer, dataset: str, problems, prompts, max_new_tokens: int, args, verifier
) -> list[EvalResult]:
    def show(spec, done, accuracy):
        print(f"  {spec.label}: {done}/{len(problems)} acc {accuracy:.3f}", flush=True)

    return compare_methods(
        HFBackend(model, tokenizer, batch_size=args.batch_size),
        problems,
        args.specs,
        [spec.to_method() for spec in args.specs],
        prompts=prompts,
        verifier=verifier,
        n=args.n,
        ks=default_ks(args.n),
        max_new_tokens=max_new_tokens,
        seed=args.seed,
        chunk_rows=args.batch_size,
        keep_responses=True,
        config={"model": args.model, "dataset": dataset, "limit": len(problems)},
        progress=show,
    )


def settings(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(name, description) of each setting: result subdirectory and plot prefix, plot title."""
    named = [(args.task, f"{args.task} 2-shot")]
    if args.gsm8k_limit > 0:
        named += [("gsm8k", "GSM8K 0-shot, strict"), ("gsm8k_fallback", "GSM8K 0-shot, fallback")]
    return named


def sample_all(args: argparse.Namespace) -> None:
    """Sample and grade every setting, writing the result files."""
    model, tokenizer = load_model(args.model)
    with MathVerifier() as strict, MathVerifier(number_fallback=True) as fallback:
        if args.task_limit > 0:
            problems = load_problems(args.task, limit=args.task_limit)
            shots = few_shot_examples(args.task)
            prompts = [format_prompt(tokenizer, p.question, few_shot=shots) for p in problems]
            results = run_setting(
                model, tokenizer, args.task, problems, prompts, args.task_tokens, args, strict
            )
            save(args.task, results, args.specs, args.json_dir)
        if args.gsm8k_limit > 0:
            problems = load_problems("gsm8k", limit=args.gsm8k_limit)
            prompts = [format_prompt(tokenizer, p.question, suffix=MATH_SUFFIX) for p in problems]
            results = run_setting(
                model, tokenizer, "gsm8k", problems, prompts, args.gsm8k_tokens, args, strict
            )
            save("gsm8k", results, args.specs, args.json_dir)
            # The same samples graded again: the last number counts when nothing is boxed.
            rescored = [rescore(r, problems, fallback) for r in results]
            save("gsm8k_fallback", rescored, args.specs, args.json_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="arith-add-2")
    parser.add_argument(
        "--task-limit", type=int, default=40, help="0 reuses the task's results in --json-dir"
    )
    parser.add_argument("--task-tokens", type=int, default=48)
    parser.add_argument("--gsm8k-limit", type=int, default=8, help="0 skips GSM8K")
    parser.add_argument("--gsm8k-tokens", type=int, default=160)
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--methods", nargs="+", default=METHODS, help="[label=]method[:k=v,...]")
    parser.add_argument("--pairs", nargs="+", default=PAIRS, help="A-B: paired differences")
    parser.add_argument("--name", default="inference", help="Prefix of the plot files.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--json-dir", type=Path, default=Path("/tmp/calmrl-study-inference"))
    parser.add_argument(
        "--from-json", action="store_true", help="Only redo tables and plots from --json-dir."
    )
    args = parser.parse_args()
    args.specs = parse_method_specs(args.methods)
    parse_pairs(args.pairs, [s.label for s in args.specs])
    torch.set_num_threads(args.threads)
    print(f"date {today()}; machine: {machine()}")
    print("command: python " + " ".join(sys.argv))
    started = time.perf_counter()
    if not args.from_json:
        sample_all(args)
    for name, description in settings(args):
        report(name, description, args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
