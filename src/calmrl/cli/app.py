"""The ``calmrl`` app, its shared option helpers and the one-line error type."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
import yaml

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


def backend_options(
    backend: str, vllm: list[str] | None, batch_size: int | None, methods: list[Any]
) -> dict[str, Any]:
    """``build_backend`` keyword arguments for ``--backend``/``--vllm``, checked (with the
    methods to sample) before any model loads."""
    from pydantic import ValidationError

    from calmrl.sampling import backend_names

    if backend not in backend_names():
        choices = ", ".join(backend_names())
        raise UsageError(f"--backend: unknown {backend!r}; choose one of: {choices}")
    if vllm and backend != "vllm":
        raise UsageError("--vllm: engine settings apply to --backend vllm only")
    options: dict[str, Any] = {"batch_size": batch_size}
    if backend == "vllm":
        from calmrl.config import VLLMConfig
        from calmrl.integrations.vllm.spec import check_method

        try:
            options["engine"] = VLLMConfig(**parse_params(vllm)).model_dump()
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise UsageError(f"--vllm {where}: {first['msg']}") from None
        for method in methods:
            try:
                check_method(method)
            except ValueError as error:
                raise UsageError(f"--method {method.name!r} with --backend vllm: {error}") from None
    return options


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )


# Options that several commands share, defined once so their help cannot drift.
ModelOption = Annotated[
    str, typer.Option("--model", help="Built-in name, .gguf file, HF directory or hub id.")
]
MaxNewTokens = Annotated[
    int, typer.Option("--max-new-tokens", help="Tokens per response, at most.")
]
TopK = Annotated[int | None, typer.Option("--top-k", help="Keep the k most likely tokens.")]
TopP = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass (0, 1].")]
MinP = Annotated[
    float | None, typer.Option("--min-p", help="Drop tokens below min_p x the top probability.")
]
SystemOption = Annotated[str | None, typer.Option("--system", help="System prompt.")]
MathSuffix = Annotated[
    bool, typer.Option("--math-suffix/--no-math-suffix", help="Append the \\boxed{} instruction.")
]
FewShot = Annotated[
    str | None,
    typer.Option("--few-shot", help="Built-in task whose 2-shot examples to prepend."),
]
QuestionField = Annotated[
    str | None, typer.Option("--question-field", help="Question field of a data file.")
]
BackendOption = Annotated[
    str, typer.Option("--backend", help="Rollout engine: hf (calmrl's own) or vllm.")
]
VLLMOption = Annotated[
    list[str] | None,
    typer.Option("--vllm", help="vLLM engine setting key=value (as rollout.vllm); repeat."),
]
AnswerField = Annotated[
    str | None, typer.Option("--answer-field", help="Gold-answer field of a data file.")
]


def rank_prefix() -> str:
    """``"rank 1: "`` under torchrun, so a failing rank names itself; empty otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"rank {os.environ.get('RANK', '?')}: "
    return ""
