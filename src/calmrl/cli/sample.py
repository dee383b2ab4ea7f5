"""``calmrl sample``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from calmrl.cli.app import METHODS, UsageError, _progress, app, parse_params
from calmrl.models import DEFAULT_MODEL


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
