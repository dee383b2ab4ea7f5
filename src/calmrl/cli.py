"""``calmrl`` command line. Thin: parse, build, call the library, report.

Bad input ends with one line ``error: <field>: <what and how to fix>`` and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from calmrl.models import DEFAULT_MODEL
from calmrl.sampling.methods import method_names

METHODS = " | ".join(method_names())

app = typer.Typer(
    help="Exploration for RL with verifiable rewards: EAD, LED, entropy-shaped advantages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class UsageError(ValueError):
    """Bad user input; reported as one line, exit code 2."""


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``["tau_max=1.2", "warmup_tokens=10"]`` -> ``{"tau_max": 1.2, "warmup_tokens": 10}``."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--param: expected key=value, got {pair!r}")
        params[key.strip()] = yaml.safe_load(value)
    return params


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )


@app.command()
def sample(
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help="A question; repeat.")
    ] = None,
    prompts_file: Annotated[
        Path | None, typer.Option(help="jsonl/parquet file, dataset preset or built-in task.")
    ] = None,
    field: Annotated[str | None, typer.Option(help="Question field in --prompts-file.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N questions.")] = None,
    model: Annotated[str, typer.Option(help="Built-in name, .gguf, HF dir or hub id.")] = (
        DEFAULT_MODEL
    ),
    method: Annotated[str, typer.Option(help=f"Sampling method: {METHODS}.")] = "ead-paper",
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Method parameter key=value.")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="Samples per prompt.")] = 4,
    max_new_tokens: int = 128,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    step: Annotated[int, typer.Option(help="Training step for step-aware decay.")] = 0,
    seed: int = 0,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    math_suffix: Annotated[bool, typer.Option(help="Append the \\boxed{} instruction.")] = True,
    few_shot: Annotated[
        str | None, typer.Option(help="Built-in task whose 2-shot examples to prepend.")
    ] = None,
    batch_size: int = 16,
    output: Annotated[Path | None, typer.Option("-o", help="Write records to this jsonl.")] = None,
    with_tokens: Annotated[
        bool, typer.Option(help="Also write per-token ids, temperatures, log-probs, entropies.")
    ] = False,
) -> None:
    """Sample responses with a temperature schedule (EAD) or LED, recording exact log-probs."""
    from rich.console import Console

    from calmrl.data import load_problems
    from calmrl.data.prompts import PromptFormat
    from calmrl.io import write_jsonl
    from calmrl.models import load_model
    from calmrl.sampling import HFBackend, Method

    questions = list(prompt or [])
    if prompts_file is not None:
        problems = load_problems(
            str(prompts_file), limit=limit, question_field=field, require_answer=False
        )
        questions += [p.question for p in problems]
    if not questions:
        raise UsageError("--prompt/--prompts-file: give at least one prompt")
    # Check the method before the model loads; LED's values are checked against its layers.
    try:
        sampling = Method(method, parse_params(param), top_k=top_k, top_p=top_p, min_p=min_p)
    except ValueError as error:
        raise UsageError(f"--method {method!r}: {error}") from None
    prompt_format = PromptFormat.build(system=system, math_suffix=math_suffix, few_shot=few_shot)
    console = Console(stderr=True)
    console.print(f"loading [bold]{model}[/]")
    lm, tokenizer = load_model(model)
    backend = HFBackend(lm, tokenizer, batch_size=batch_size)
    backend.check(sampling)
    with _progress() as bar:
        task = bar.add_task(f"sampling ({method})", total=len(questions) * n)
        rollouts = backend.generate(
            prompt_format.render_all(tokenizer, questions),
            sampling,
            n=n,
            max_new_tokens=max_new_tokens,
            seed=seed,
            step=step,
            progress=lambda k: bar.advance(task, k),
        )
    records = rollouts.to_records(with_tokens=with_tokens)
    for record in records:
        record["prompt"] = questions[record["group"]]
    if output is not None:
        write_jsonl(output, records)
        console.print(f"wrote {len(records)} records to {output}")
    else:
        for record in records:
            typer.echo(f"[{record['group']}] ({record['num_tokens']} tok) {record['text']!r}")


EVAL_METHOD_HELP = (
    "Method to compare; repeat. Syntax \\[label=]method\\[:key=value,...], e.g. constant:tau=0.6, "
    f"ead-paper, ead:tau_max=1.2,time_scale=20, hot=constant:tau=1.2. Methods: {METHODS}."
)


@app.command("eval")
def eval_(
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="Preset (gsm8k, ...), file or built-in task.")
    ],
    method: Annotated[list[str], typer.Option("--method", "-m", help=EVAL_METHOD_HELP)],
    limit: Annotated[int | None, typer.Option(help="Use the first N problems.")] = None,
    data_seed: Annotated[int, typer.Option(help="Seed of built-in task problems.")] = 0,
    model: Annotated[str, typer.Option(help="Built-in name, .gguf, HF dir or hub id.")] = (
        DEFAULT_MODEL
    ),
    n: Annotated[int, typer.Option("-n", help="Samples per problem.")] = 16,
    k: Annotated[
        str | None, typer.Option("--ks", "-k", help="Comma-separated k; default: powers of 2 to n.")
    ] = None,
    max_new_tokens: int = 256,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: Annotated[int, typer.Option(help="Sampling seed, the same for every method.")] = 0,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    math_suffix: Annotated[bool, typer.Option(help="Append the \\boxed{} instruction.")] = True,
    few_shot: Annotated[
        str | None, typer.Option(help="Built-in task whose 2-shot examples to prepend.")
    ] = None,
    number_fallback: Annotated[
        bool, typer.Option(help="Grade the last number when a response has no \\boxed{}.")
    ] = False,
    batch_size: int = 64,
    save_responses: Annotated[
        bool, typer.Option(help="Store every response in the JSON (for rescoring).")
    ] = False,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Where to write JSONs and PNGs.")
    ] = Path("eval-results"),
) -> None:
    """Compare sampling methods: n samples per problem, pass@k / worst@k / maj@k with 95% CIs.

    Writes OUTPUT_DIR/LABEL.json per method (per-problem counts, metrics, config) and
    pass_at_k.png, worst_at_k.png, maj_at_k.png with all methods on each plot.

    Example: calmrl eval -d arith-add-2 --limit 40 --few-shot arith-add-2 -n 16 -m
    constant:tau=0.6 -m ead-paper -m ead-official
    """
    from rich.console import Console
    from rich.table import Table

    from calmrl.analysis.plots import plot_eval_results
    from calmrl.data import load_problems
    from calmrl.data.prompts import PromptFormat
    from calmrl.eval.compare import (
        compare_methods,
        format_ci,
        parse_ks,
        parse_method_specs,
        summary_metrics,
        write_result,
    )
    from calmrl.models import load_model
    from calmrl.rewards import get_reward
    from calmrl.sampling import HFBackend

    # Everything the user typed is checked before the model loads and before anything is written.
    specs = parse_method_specs(method)
    methods = [s.to_method(top_k=top_k, top_p=top_p, min_p=min_p) for s in specs]
    ks = parse_ks(k, n)
    prompt_format = PromptFormat.build(system=system, math_suffix=math_suffix, few_shot=few_shot)
    problems = load_problems(dataset, limit=limit, seed=data_seed)
    if not problems:
        raise UsageError(f"--dataset: {dataset!r} gave no problems")
    console = Console(stderr=True)
    console.print(f"loading [bold]{model}[/]")
    lm, tokenizer = load_model(model)
    backend = HFBackend(lm, tokenizer, batch_size=batch_size)
    for spec, sampling in zip(specs, methods, strict=True):
        try:
            backend.check(sampling)
        except ValueError as error:
            raise UsageError(f"--method {spec.label!r}: {error}") from None
    prompts = prompt_format.render_all(tokenizer, [p.question for p in problems])
    config = {
        "model": model,
        "dataset": dataset,
        "limit": limit,
        "data_seed": data_seed,
        "few_shot": few_shot,
        "math_suffix": math_suffix,
        "system": system,
        "number_fallback": number_fallback,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "batch_size": batch_size,
    }
    files = []
    with get_reward("math", number_fallback=number_fallback) as verifier, _progress() as bar:
        tasks = {s.label: bar.add_task(s.label, total=len(problems), start=False) for s in specs}
        results = compare_methods(
            backend,
            problems,
            specs,
            methods,
            prompts=prompts,
            verifier=verifier,
            n=n,
            ks=ks,
            max_new_tokens=max_new_tokens,
            seed=seed,
            chunk_rows=batch_size,
            keep_responses=save_responses,
            config=config,
            on_start=lambda spec: bar.start_task(tasks[spec.label]),
            progress=lambda spec, done, acc: bar.update(
                tasks[spec.label], completed=done, description=f"{spec.label} acc {acc:.3f}"
            ),
            on_done=lambda spec, result: files.append(write_result(result, spec, output_dir)),
        )
    title = f"{dataset}: {len(problems)} problems x {n} samples (95% CI)"
    plots = plot_eval_results(files, output_dir, title=title)

    columns = summary_metrics(ks)
    table = Table(title=title)
    table.add_column("method")
    for name in columns:
        table.add_column(name, justify="right")
    table.add_column("tokens", justify="right")
    for result in results:
        mean_length = sum(p.mean_length for p in result.problems) / len(result.problems)
        table.add_row(
            result.method,
            *(format_ci(result.metrics[name]) for name in columns),
            f"{mean_length:.1f}",
        )
    Console().print(table)
    for path in [*files, *plots]:
        console.print(f"wrote {path}")


@app.command(context_settings={"allow_extra_args": False})
def train(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides, e.g. optim.lr=2e-6")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML recipe.")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this directory from its checkpoint.")
    ] = None,
) -> None:
    """Train with RLVR: EAD/LED rollouts, GRPO/DAPO losses, TIS, entropy shaping."""
    from rich.console import Console

    from calmrl.config import load_config
    from calmrl.rl.trainer import run_training

    if resume is not None:
        saved = resume / "config.yaml"
        if config is not None:
            raise UsageError("--resume: the run's saved config.yaml is used; drop --config")
        cfg = load_config(saved, [*(overrides or []), f"train.output_dir={resume}"])
    else:
        cfg = load_config(config, overrides or [])
    console = Console()
    console.print(f"[bold]calmrl train[/] -> {cfg.train.output_dir}")
    run_training(cfg, resume=resume is not None, console=console)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run directories or eval result JSON files.")],
    output: Annotated[Path, typer.Option("-o", help="Where to write the PNGs.")] = Path("plots"),
) -> None:
    """Draw training curves of runs (or pass@k/worst@k/maj@k curves of eval results)."""
    from calmrl.analysis.plots import plot_eval_results, plot_training_runs

    files = [r for r in runs if r.is_file()]
    dirs = [r for r in runs if r.is_dir()]
    missing = [r for r in runs if not r.exists()]
    if missing:
        raise UsageError(f"runs: {missing[0]} does not exist")
    written = []
    if dirs:
        written += plot_training_runs(dirs, output)
    if files:
        written += plot_eval_results(files, output)
    for path in written:
        typer.echo(str(path))


analyze_app = typer.Typer(help="Analyses that reproduce the papers' figures.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("layer-entropy")
def layer_entropy(
    model: Annotated[str, typer.Option(help="Built-in name, .gguf, HF dir or hub id.")] = (
        DEFAULT_MODEL
    ),
    dataset: Annotated[str, typer.Option(help="Preset, file or built-in task.")] = "arith-add-2",
    few_shot: Annotated[
        str | None, typer.Option(help="Built-in task whose 2-shot examples to prepend.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Number of problems.")] = 8,
    n: Annotated[int, typer.Option("-n", help="Samples per problem.")] = 2,
    max_new_tokens: int = 128,
    temperature: float = 0.6,
    seed: int = 0,
    output: Annotated[Path, typer.Option("-o", help="Output directory.")] = Path(
        "analysis/layer-entropy"
    ),
) -> None:
    """Mean entropy of every layer's posterior (logit lens) over generated tokens: CSV + PNG."""
    from calmrl.analysis.layer_entropy import layer_entropy_report
    from calmrl.data import load_problems
    from calmrl.data.prompts import PromptFormat
    from calmrl.models import load_model
    from calmrl.sampling import HFBackend

    problems = load_problems(dataset, limit=limit, seed=seed)
    prompt_format = PromptFormat.build(few_shot=few_shot)
    lm, tokenizer = load_model(model)
    prompts = prompt_format.render_all(tokenizer, [p.question for p in problems])
    title = f"Layer entropy: {Path(model).name}, {dataset} ({len(problems)} x {n}, T={temperature})"
    with _progress() as bar:
        tasks: dict[str, Any] = {}

        def advance(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.advance(tasks[phase], done)

        summary = layer_entropy_report(
            lm, HFBackend(lm, tokenizer), prompts, n=n, max_new_tokens=max_new_tokens, seed=seed,
            out_dir=output, temperature=temperature, title=title, progress=advance,
        )  # fmt: skip
    for key, value in summary.items():
        if key != "rows":  # those are in the CSV
            typer.echo(f"{key}: {value}")


@app.command()
def demo(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides of the demo config.")
    ] = None,
    sampling_only: Annotated[
        bool, typer.Option(help="Only compare EAD and constant-temperature samples.")
    ] = False,
) -> None:
    """The main job on the built-in default: a short GRPO + EAD + TIS run on the CPU."""
    from calmrl.demo import run_sampling_demo, run_training_demo

    if sampling_only:
        run_sampling_demo(model=DEFAULT_MODEL)
    else:
        run_training_demo(overrides)


def main() -> None:
    """Console entry point: one-line errors, exit code 2, for bad input."""
    try:
        app()
    except (UsageError, ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
