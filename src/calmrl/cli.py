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
    method: Annotated[
        str, typer.Option(help="constant | ead | ead-paper | ead-official | reverse-ead | led")
    ] = "ead-paper",
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

    from calmrl.data import few_shot_examples, load_problems
    from calmrl.data.prompts import MATH_SUFFIX, format_prompt
    from calmrl.io import write_jsonl
    from calmrl.models import load_model
    from calmrl.sampling import generate
    from calmrl.sampling.methods import make_sampler

    questions = list(prompt or [])
    if prompts_file is not None:
        problems = load_problems(str(prompts_file), limit=limit, question_field=field)
        questions += [p.question for p in problems]
    if not questions:
        raise UsageError("--prompt/--prompts-file: give at least one prompt")
    params = parse_params(param)
    console = Console(stderr=True)
    console.print(f"loading [bold]{model}[/]")
    lm, tokenizer = load_model(model)
    sampler = make_sampler(method, params, model=lm, top_k=top_k, top_p=top_p, min_p=min_p)
    shots = few_shot_examples(few_shot) if few_shot else ()
    suffix = MATH_SUFFIX if math_suffix else None
    texts = [
        format_prompt(tokenizer, q, system=system, suffix=suffix, few_shot=shots) for q in questions
    ]
    with _progress() as bar:
        task = bar.add_task(f"sampling ({method})", total=len(texts) * n)
        rollouts = generate(
            lm,
            tokenizer,
            texts,
            sampler,
            n=n,
            max_new_tokens=max_new_tokens,
            seed=seed,
            step=step,
            batch_size=batch_size,
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


@app.command()
def demo(
    model: str = DEFAULT_MODEL,
    n: Annotated[int, typer.Option("-n", help="Samples per prompt.")] = 4,
    max_new_tokens: int = 96,
    seed: int = 0,
) -> None:
    """Sample built-in arithmetic prompts with EAD and constant temperature; print a comparison."""
    from calmrl.demo import run_sampling_demo

    run_sampling_demo(model=model, n=n, max_new_tokens=max_new_tokens, seed=seed)


def main() -> None:
    """Console entry point: one-line errors, exit code 2, for bad input."""
    try:
        app()
    except (UsageError, ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
