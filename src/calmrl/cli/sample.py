"""``calmrl sample``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from calmrl.cli.app import (
    METHODS,
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
    parse_params,
)
from calmrl.models import DEFAULT_MODEL


@app.command()
def sample(
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help="A question; repeat for several.")
    ] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option("--prompts-file", help="jsonl/parquet file, dataset preset or built-in task."),
    ] = None,
    field: QuestionField = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use the first N questions.")] = None,
    model: ModelOption = DEFAULT_MODEL,
    method: Annotated[str, typer.Option("--method", help=f"Sampling method: {METHODS}.")] = (
        "ead-paper"
    ),
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Method parameter key=value; repeat."),
    ] = None,
    n: Annotated[int, typer.Option("--samples", "-n", help="Samples per prompt.")] = 4,
    max_new_tokens: MaxNewTokens = 128,
    top_k: TopK = None,
    top_p: TopP = None,
    min_p: MinP = None,
    step: Annotated[int, typer.Option("--step", help="Training step for step-aware decay.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    system: SystemOption = None,
    math_suffix: MathSuffix = True,
    few_shot: FewShot = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Rows decoded together (whole prompts).")
    ] = 16,
    backend: BackendOption = "hf",
    vllm: VLLMOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write records to this jsonl file.")
    ] = None,
    with_tokens: Annotated[
        bool,
        typer.Option(
            "--with-tokens", help="Also write per-token ids, temperatures, log-probs, entropies."
        ),
    ] = False,
) -> None:
    """Sample responses with a temperature schedule (EAD) or LED, recording exact log-probs."""
    from rich.console import Console

    from calmrl.data import load_problems
    from calmrl.data.prompts import PromptFormat
    from calmrl.io import check_writable_file, write_jsonl
    from calmrl.models import load_model
    from calmrl.preflight import as_config_error, check_model_source
    from calmrl.sampling import Method, build_backend

    if output is not None:
        check_writable_file(output, "--output")
    check_model_source(model, key="--model")
    questions = list(prompt or [])
    if prompts_file is not None:
        problems = as_config_error(
            "--prompts-file", load_problems, str(prompts_file), limit=limit,
            question_field=field, require_answer=False,
        )  # fmt: skip
        questions += [p.question for p in problems]
    if not questions:
        raise UsageError("--prompt/--prompts-file: give at least one prompt")
    # Check the method before the model loads; LED's values are checked against its layers.
    try:
        sampling = Method(method, parse_params(param), top_k=top_k, top_p=top_p, min_p=min_p)
    except ValueError as error:
        raise UsageError(f"--method {method!r}: {error}") from None
    options = backend_options(backend, vllm, batch_size, [sampling])
    prompt_format = PromptFormat.build(system=system, math_suffix=math_suffix, few_shot=few_shot)
    console = Console(stderr=True)
    console.print(f"loading [bold]{model}[/]")
    lm, tokenizer = load_model(model)
    engine = build_backend(backend, lm, tokenizer, **options)
    try:
        engine.check(sampling)
        with _progress() as bar:
            task = bar.add_task(f"sampling ({method})", total=len(questions) * n)
            rollouts = engine.generate(
                prompt_format.render_all(tokenizer, questions),
                sampling,
                n=n,
                max_new_tokens=max_new_tokens,
                seed=seed,
                step=step,
                progress=lambda k: bar.advance(task, k),
            )
    finally:
        engine.close()
    records = rollouts.to_records(with_tokens=with_tokens)
    for record in records:
        record["prompt"] = questions[record["group"]]
    if output is not None:
        write_jsonl(output, records)
        console.print(f"wrote {len(records)} records to {output}")
    else:
        for record in records:
            typer.echo(f"[{record['group']}] ({record['num_tokens']} tok) {record['text']!r}")
