"""``calmrl demo``: the main job on the built-in default, and a sampling side-by-side.

``run_training_demo`` trains SmolLM2-135M-Instruct with GRPO + EAD rollouts + TIS on built-in
arithmetic (the defaults of ``calmrl.config`` plus ``model.autocast=auto``, written out in
``configs/demo.yaml``), then
prints held-out pass@k / worst@k before and after and saves plots. ``run_sampling_demo``
samples the same prompts with EAD and with constant temperature and compares them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from calmrl.analysis.plots import plot_eval_results, plot_training_runs
from calmrl.config import Config, load_config
from calmrl.data import load_problems
from calmrl.data.prompts import PromptFormat
from calmrl.eval.runner import EvalResult
from calmrl.io import write_json
from calmrl.models import load_model
from calmrl.models.compat import resolve_autocast
from calmrl.rl.trainer import run_training
from calmrl.sampling import HFBackend, Method, Rollouts
from calmrl.sampling.metrics import mean_by_position_band

DEMO_TASK = Config().data.train


def run_training_demo(overrides: list[str] | None = None) -> dict[str, EvalResult]:
    """Train on the built-in default, then show held-out metrics before and after."""
    console = Console()
    # The demo is meant to be re-run: it replaces its own earlier run.
    # It writes a checkpoint at its last step, so `calmrl train --resume runs/demo` continues it.
    # bf16 autocast where this machine's bf16 matmuls are fast (model.autocast=null: fp32).
    steps = Config().train.steps
    defaults = ["train.overwrite=true", f"train.save_every={steps}", "model.autocast=auto"]
    config = load_config(None, [*defaults, *(overrides or [])])
    run_dir = Path(config.train.output_dir)
    compute = resolve_autocast(config.model.autocast, torch.device(config.model.device))
    console.print(
        f"[bold]calmrl demo[/]: {config.model.name}, task {config.data.train}, "
        f"{config.rollout.method} rollouts (G={config.rollout.n}), "
        f"TIS {'on' if config.algorithm.tis else 'off'}, "
        f"{'bf16 autocast' if compute is torch.bfloat16 else 'fp32'}, "
        f"{config.train.steps} steps -> {run_dir}"
    )
    history = run_training(config, console=console)
    written = plot_training_runs([run_dir], run_dir / "plots")
    if "before" not in history:  # evaluation switched off (train.eval_every=0)
        console.print("plots: " + ", ".join(str(p) for p in written))
        return history
    before, after = history["before"], history["after"]
    table = Table(
        title=f"Held-out {config.data.eval} ({len(before.problems)} problems, "
        f"n={before.n}, {config.train.eval_method} {config.train.eval_params})"
    )
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for name in before.metrics:
        if name.startswith(("pass@", "worst@", "maj@")):
            b, a = before.metrics[name], after.metrics[name]
            table.add_row(name, _ci(b), _ci(a))
    console.print(table)
    plots = run_dir / "plots"
    for label, result in (("before", before), ("after", after)):
        result.method = f"{label} training"
        write_json(plots / f"eval_{label}.json", result.to_dict())
    title = (
        f"held-out {config.data.eval}: {len(before.problems)} problems x n={before.n}, "
        f"{config.train.eval_method} {config.train.eval_params}\nband: 95% bootstrap CI"
    )
    files = [plots / "eval_before.json", plots / "eval_after.json"]
    written += plot_eval_results(files, plots, title=title)
    console.print("plots: " + ", ".join(str(p) for p in written))
    return history


def _ci(value: dict[str, float]) -> str:
    return f"{value['mean']:.3f} [{value['lo']:.2f}, {value['hi']:.2f}]"


def run_sampling_demo(
    *, model: str, n: int = 4, max_new_tokens: int = 96, seed: int = 0, num_prompts: int = 4
) -> dict[str, Rollouts]:
    console = Console()
    console.print(f"[bold]calmrl demo[/]: loading {model} (first run converts the GGUF, ~30 s)")
    lm, tokenizer = load_model(model)
    backend = HFBackend(lm, tokenizer)
    problems = load_problems(DEMO_TASK, limit=num_prompts, seed=seed)
    prompt_format = PromptFormat.build(few_shot=DEMO_TASK)
    prompts = prompt_format.render_all(tokenizer, [p.question for p in problems])
    methods = {
        "constant tau=1.0": Method("constant", {"tau": 1.0}),
        "EAD (ead-paper)": Method("ead-paper"),
    }
    results = {}
    for name, method in methods.items():
        with console.status(f"sampling {len(prompts)} prompts x {n} with {name}"):
            results[name] = backend.generate(
                prompts, method, n=n, max_new_tokens=max_new_tokens, seed=seed
            )
    _print_texts(console, problems, results)
    _print_summary(console, results)
    return results


def _print_texts(console: Console, problems, results: dict[str, Rollouts]) -> None:
    table = Table(title="First sample per prompt", show_lines=True)
    table.add_column("question", max_width=28)
    for name in results:
        table.add_column(name, max_width=48)
    for i, problem in enumerate(problems):
        cells = []
        for rollouts in results.values():
            row = int((rollouts.group_index == i).nonzero()[0])
            text = rollouts.texts[row].strip().replace("\n", " ")
            cells.append(f"{text[:160]}\n[dim]{int(rollouts.response_lengths[row])} tokens[/]")
        table.add_row(f"{problem.question}\n[dim]gold {problem.answer}[/]", *cells)
    console.print(table)


def _print_summary(console: Console, results: dict[str, Rollouts]) -> None:
    table = Table(title="Mean length, temperature and tau=1 entropy by position band")
    table.add_column("position band")
    for name in results:
        table.add_column(f"{name}\nentropy", justify="right")
        table.add_column("temp", justify="right")
    by_method = {
        name: (
            mean_by_position_band(r.entropies, r.response_mask),
            mean_by_position_band(r.temperatures, r.response_mask),
        )
        for name, r in results.items()
    }
    bands = list(next(iter(by_method.values()))[0])
    for band in bands:
        cells = []
        for entropy, temperature in by_method.values():
            cells += [
                f"{entropy.get(band, float('nan')):.3f}",
                f"{temperature.get(band, float('nan')):.2f}",
            ]
        table.add_row(band, *cells)
    lengths = []
    for r in results.values():
        lengths += [f"{float(r.response_lengths.float().mean()):.1f}", ""]
    table.add_row("mean length", *lengths)
    console.print(table)
