"""``calmrl eval``: compare sampling methods on one dataset."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from calmrl.cli.app import (
    METHODS,
    AnswerField,
    BackendOption,
    FewShot,
    MathSuffix,
    MaxNewTokens,
    MinP,
    ModelOption,
    QuestionField,
    SystemOption,
    TopK,
    TopP,
    UsageError,
    VLLMOption,
    _progress,
    app,
    backend_options,
)
from calmrl.models import DEFAULT_MODEL

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
    limit: Annotated[int | None, typer.Option("--limit", help="Use the first N problems.")] = None,
    data_seed: Annotated[
        int, typer.Option("--data-seed", help="Seed of built-in task problems.")
    ] = 0,
    question_field: QuestionField = None,
    answer_field: AnswerField = None,
    model: ModelOption = DEFAULT_MODEL,
    n: Annotated[int, typer.Option("--samples", "-n", help="Samples per problem.")] = 16,
    k: Annotated[
        str | None, typer.Option("--ks", "-k", help="Comma-separated k; default: powers of 2 to n.")
    ] = None,
    max_new_tokens: MaxNewTokens = 256,
    top_k: TopK = None,
    top_p: TopP = None,
    min_p: MinP = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Sampling seed, the same for every method.")
    ] = 0,
    system: SystemOption = None,
    math_suffix: MathSuffix = True,
    few_shot: FewShot = None,
    number_fallback: Annotated[
        bool,
        typer.Option(
            "--number-fallback/--no-number-fallback",
            help="Grade the last number when a response has no \\boxed{}.",
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Rows decoded together (whole problems).")
    ] = 64,
    rollout_backend: BackendOption = "hf",
    vllm: VLLMOption = None,
    save_responses: Annotated[
        bool,
        typer.Option("--save-responses", help="Store every response in the JSON (rescoring)."),
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
    from calmrl.io import check_writable_dir
    from calmrl.models import load_model
    from calmrl.preflight import as_config_error, check_model_source
    from calmrl.rewards import get_reward
    from calmrl.sampling import build_backend

    # Everything the user typed is checked before the model loads and before anything is written.
    specs = parse_method_specs(method)
    methods = [s.to_method(top_k=top_k, top_p=top_p, min_p=min_p) for s in specs]
    ks = parse_ks(k, n)
    options = backend_options(rollout_backend, vllm, batch_size, methods)
    prompt_format = PromptFormat.build(system=system, math_suffix=math_suffix, few_shot=few_shot)
    check_writable_dir(output_dir, "--output-dir")
    check_model_source(model, key="--model")
    problems = as_config_error(
        "--dataset",
        load_problems,
        dataset,
        limit=limit,
        seed=data_seed,
        question_field=question_field,
        answer_field=answer_field,
    )
    if not problems:
        raise UsageError(f"--dataset: {dataset!r} gave no problems")
    console = Console(stderr=True)
    console.print(f"loading [bold]{model}[/]")
    lm, tokenizer = load_model(model)
    backend = build_backend(rollout_backend, lm, tokenizer, **options)
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
        "question_field": question_field,
        "answer_field": answer_field,
        "math_suffix": math_suffix,
        "system": system,
        "number_fallback": number_fallback,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "batch_size": batch_size,
        "backend": rollout_backend,
    }
    files = []
    with (
        contextlib.closing(backend),
        get_reward("math", number_fallback=number_fallback) as verifier,
        _progress() as bar,
    ):
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
