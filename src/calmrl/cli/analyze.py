"""``calmrl plot`` and ``calmrl analyze ...``: figures of runs, results and the papers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from calmrl.cli.app import FewShot, MaxNewTokens, ModelOption, UsageError, _progress, app
from calmrl.models import DEFAULT_MODEL

# The options every analysis shares, defined once.
DatasetOption = Annotated[str, typer.Option("--dataset", help="Preset, file or built-in task.")]
LimitOption = Annotated[int, typer.Option("--limit", help="Number of problems.")]
SamplesOption = Annotated[int, typer.Option("--samples", "-n", help="Samples per problem.")]
TemperatureOption = Annotated[
    float, typer.Option("--temperature", help="Constant sampling temperature.")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Sampling and data seed.")]
OutputDir = Annotated[
    Path, typer.Option("--output", "-o", help="Output directory for the CSV and PNG.")
]


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run directories or eval result JSON files.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the PNGs.")] = Path(
        "plots"
    ),
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


def _check_outputs(output: Path, models: list[str]) -> None:
    """Before any model loads: the output directory and every model source."""
    from calmrl.io import check_writable_dir
    from calmrl.preflight import check_model_source

    check_writable_dir(output, "--output")
    for name in models:
        check_model_source(name, key="--model")


def _model_and_prompts(model: str, problems: list, few_shot: str | None) -> tuple[Any, Any, list]:
    from calmrl.data.prompts import PromptFormat
    from calmrl.models import load_model

    lm, tokenizer = load_model(model)
    prompts = PromptFormat.build(few_shot=few_shot).render_all(
        tokenizer, [p.question for p in problems]
    )
    return lm, tokenizer, prompts


def _label(model: str) -> str:
    """A model's name in legends: as given, or the file name of an absolute path."""
    return Path(model).name if Path(model).is_absolute() else model


def _output_paths(output: Path, kind: str, models: list[str], dataset: str) -> tuple[Path, Path]:
    """``<output>/<analysis>_<model(s)>_<dataset>.{csv,png}``, the directory created."""
    output.mkdir(parents=True, exist_ok=True)
    stem = f"{kind}_{'+'.join(Path(m).name for m in models)}_{Path(dataset).stem}"
    return output / f"{stem}.csv", output / f"{stem}.png"


analyze_app = typer.Typer(help="Analyses that reproduce the papers' figures.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("layer-entropy")
def layer_entropy(
    model: ModelOption = DEFAULT_MODEL,
    dataset: DatasetOption = "arith-add-2",
    few_shot: FewShot = None,
    limit: LimitOption = 8,
    n: SamplesOption = 2,
    max_new_tokens: MaxNewTokens = 128,
    temperature: TemperatureOption = 0.6,
    seed: SeedOption = 0,
    output: OutputDir = Path("analysis/layer-entropy"),
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


IS_SCHEDULES = (
    "T0.6=constant:tau=0.6",
    "T1.0=constant:tau=1.0",
    "T1.2=constant:tau=1.2",
    "ead-paper",
    "ead-official",
    "ead-max1.5=ead:tau_max=1.5",
    "ead-min0.6=ead:tau_min=0.6",
)


@analyze_app.command("is-variance")
def is_variance_command(
    model: ModelOption = DEFAULT_MODEL,
    dataset: DatasetOption = "arith-add-2",
    few_shot: FewShot = "arith-add-2",
    limit: LimitOption = 8,
    n: SamplesOption = 4,
    max_new_tokens: MaxNewTokens = 48,
    schedule: Annotated[
        list[str] | None,
        typer.Option(
            "--schedule",
            "-m",
            help="[label=]method[:key=value,...]; repeat (default: a grid of "
            "constant temperatures and EAD settings).",
        ),
    ] = None,
    cap: Annotated[float, typer.Option("--cap", help="The TIS cap C.")] = 2.0,
    seed: SeedOption = 0,
    output: OutputDir = Path("analysis/is-variance"),
) -> None:
    """Importance weights pi/mu against the schedule (EAD appendix B): variance, ESS, share
    above the TIS cap, token and sequence level: CSV + PNG."""
    from calmrl.analysis.is_variance import is_variance, plot, write_csv
    from calmrl.data import load_problems
    from calmrl.eval.compare import parse_method_specs
    from calmrl.sampling import HFBackend

    specs = parse_method_specs(list(schedule or IS_SCHEDULES))
    _check_outputs(output, [model])
    problems = load_problems(dataset, limit=limit, seed=seed)
    lm, tokenizer, prompts = _model_and_prompts(model, problems, few_shot)
    with _progress() as bar:
        task = bar.add_task("schedules", total=len(specs))
        rows = is_variance(
            HFBackend(lm, tokenizer), prompts, [(s.label, s.to_method()) for s in specs],
            n=n, max_new_tokens=max_new_tokens, seed=seed, cap=cap,
            progress=lambda label: bar.advance(task),
        )  # fmt: skip
    csv_path, png_path = _output_paths(output, "is-variance", [model], dataset)
    write_csv(rows, csv_path)
    title = f"Importance weights pi/mu: {Path(model).name}, {dataset} ({len(problems)} x {n})"
    plot(rows, png_path, title=title, cap=cap)
    typer.echo("| schedule | level | mean T | E[rho] | Var[rho] | ESS/n | > cap |")
    for r in rows:
        typer.echo(
            f"| {r.schedule} | {r.level} | {r.temperature_mean:.2f} | {r.mean:.3f} | "
            f"{r.variance:.3g} | {r.ess:.3f} | {r.frac_above_cap:.3f} |"
        )
    typer.echo(f"wrote {csv_path}, {png_path}")


@analyze_app.command("entropy-position")
def entropy_position_command(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Model or checkpoint (built-in, .gguf, HF dir); repeat."),
    ] = None,
    dataset: DatasetOption = "arith-add-2",
    few_shot: FewShot = "arith-add-2",
    limit: LimitOption = 16,
    n: SamplesOption = 4,
    max_new_tokens: MaxNewTokens = 48,
    temperature: TemperatureOption = 1.0,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Report where the mean entropy falls below it.")
    ] = 0.1,
    seed: SeedOption = 0,
    output: OutputDir = Path("analysis/entropy-position"),
) -> None:
    """Mean tau = 1 token entropy at each generated position, 95% band (EAD Fig. 1): CSV + PNG,
    one curve per model (e.g. before and after `make demo`: --model smollm2-135m-instruct
    --model runs/demo/final)."""
    from calmrl.analysis.entropy_position import entropy_by_position, plot, write_csv
    from calmrl.data import load_problems
    from calmrl.sampling import HFBackend, Method

    models = list(model or [DEFAULT_MODEL])
    _check_outputs(output, models)
    problems = load_problems(dataset, limit=limit, seed=seed)
    curves = []
    with _progress() as bar:
        task = bar.add_task("models", total=len(models))
        for name in models:
            lm, tokenizer, prompts = _model_and_prompts(name, problems, few_shot)
            rollouts = HFBackend(lm, tokenizer).generate(
                prompts, Method("constant", {"tau": temperature}), n=n,
                max_new_tokens=max_new_tokens, seed=seed,
            )  # fmt: skip
            curves.append(entropy_by_position(rollouts, label=_label(name)))
            bar.advance(task)
    csv_path, png_path = _output_paths(output, "entropy-position", models, dataset)
    write_csv(curves, csv_path)
    plot(curves, png_path, title=f"Entropy by position: {dataset}, T={temperature}, "
         f"{len(problems)} x {n}")  # fmt: skip
    for curve in curves:
        s = curve.summary(threshold)
        slope = f"{s['slope']:.4f}" if s["slope"] is not None else "n/a"
        typer.echo(
            f"{curve.label}: mean entropy over the first 8 tokens {s['mean_first_8']:.3f} nats, "
            f"slope {slope} nats/token, first below {threshold} at t={s['first_below']}"
        )
    typer.echo(f"wrote {csv_path}, {png_path}")


@analyze_app.command("token-entropy")
def token_entropy_command(
    model: ModelOption = DEFAULT_MODEL,
    dataset: DatasetOption = "arith-word-1",
    few_shot: FewShot = None,
    limit: LimitOption = 16,
    n: SamplesOption = 4,
    max_new_tokens: MaxNewTokens = 96,
    temperature: TemperatureOption = 1.0,
    min_count: Annotated[
        int, typer.Option("--min-count", help="Occurrences a token needs to be ranked.")
    ] = 3,
    seed: SeedOption = 0,
    output: OutputDir = Path("analysis/token-entropy"),
) -> None:
    """Token entropies grouped by token: the highest-entropy tokens, and pivotal / reflective
    word classes against all other tokens, with 95% CIs (the entropy paper): CSV + PNG."""
    from calmrl.analysis.token_entropy import (
        class_groups,
        entropies_by_token,
        plot,
        top_tokens,
        write_csv,
    )
    from calmrl.data import load_problems
    from calmrl.sampling import HFBackend, Method

    _check_outputs(output, [model])
    problems = load_problems(dataset, limit=limit, seed=seed)
    lm, tokenizer, prompts = _model_and_prompts(model, problems, few_shot)
    with _progress() as bar:
        task = bar.add_task("sampling", total=len(prompts) * n)
        rollouts = HFBackend(lm, tokenizer).generate(
            prompts, Method("constant", {"tau": temperature}), n=n,
            max_new_tokens=max_new_tokens, seed=seed, progress=lambda k: bar.advance(task, k),
        )  # fmt: skip
    grouped = entropies_by_token(rollouts, tokenizer)
    top, classes = top_tokens(grouped, min_count=min_count), class_groups(grouped)
    csv_path, png_path = _output_paths(output, "token-entropy", [model], dataset)
    write_csv(grouped, csv_path)
    plot(top, classes, png_path, title=f"Token entropy: {Path(model).name}, {dataset}")
    for group in classes:
        typer.echo(
            f"{group.name}: {group.count} tokens, mean entropy {group.mean:.3f} "
            f"[{group.lo:.3f}, {group.hi:.3f}]"
        )
    typer.echo("highest: " + ", ".join(f"{g.name!r} {g.mean:.2f}" for g in top[:10]))
    typer.echo(f"wrote {csv_path}, {png_path}")


@analyze_app.command("forking")
def forking_command(
    model: ModelOption = DEFAULT_MODEL,
    dataset: DatasetOption = "arith-add-2",
    few_shot: FewShot = "arith-add-2",
    limit: LimitOption = 16,
    k: Annotated[int, typer.Option("--samples", "-k", help="Continuations per branch.")] = 8,
    positions: Annotated[
        str, typer.Option("--positions", help="Comma-separated branch positions t.")
    ] = "0,2,4,8,16",
    temperature: Annotated[
        float, typer.Option("--temperature", help="Temperature of the continuations.")
    ] = 1.0,
    reference_tau: Annotated[
        float | None,
        typer.Option("--reference-tau", help="Sample the references at this tau (default greedy)."),
    ] = None,
    max_new_tokens: MaxNewTokens = 48,
    seed: SeedOption = 0,
    output: OutputDir = Path("analysis/forking"),
) -> None:
    """Branch a reference response at positions t and complete it k times: pass@k / maj@k of
    the branches against t, with 95% CIs (EAD Fig. 2): CSV + PNG."""
    from calmrl.analysis.forking import fork, plot, write_csv
    from calmrl.data import load_problems
    from calmrl.rewards import MathVerifier
    from calmrl.sampling import HFBackend, Method

    try:
        at = sorted({int(p) for p in positions.split(",") if p.strip()})
    except ValueError:
        raise UsageError(
            f"--positions: expected integers such as 0,4,16, got {positions!r}"
        ) from None
    if not at or at[0] < 0:
        raise UsageError("--positions: give positions >= 0")
    _check_outputs(output, [model])
    problems = load_problems(dataset, limit=limit, seed=seed)
    lm, tokenizer, prompts = _model_and_prompts(model, problems, few_shot)
    with MathVerifier() as verifier, _progress() as bar:
        task = bar.add_task("branch positions", total=len(at))
        _, branchings = fork(
            HFBackend(lm, tokenizer), tokenizer, problems, prompts, verifier, positions=at, k=k,
            method=Method("constant", {"tau": temperature}), max_new_tokens=max_new_tokens,
            reference_tau=reference_tau, seed=seed, progress=lambda _: bar.advance(task),
        )  # fmt: skip
    csv_path, png_path = _output_paths(output, "forking", [model], dataset)
    write_csv(branchings, csv_path)
    plot(branchings, png_path, k=k, title=f"Forking: {Path(model).name}, {dataset}, "
         f"{len(problems)} problems, k={k}, T={temperature}")  # fmt: skip
    for b in branchings:
        shown = ", ".join(f"{n} {v['mean']:.3f}" for n, v in b.metrics.items() if "@" in n)
        typer.echo(f"t={b.position}: {shown}")
    typer.echo(f"wrote {csv_path}, {png_path}")
