"""Forking early beats forking late (EAD, Figure 2, after Yang & Holtzman 2025).

Take one reference response per problem (greedy, or sampled at ``reference_tau``), and branch
it at positions ``t1, t2, ...``: keep its first ``t`` tokens, then sample ``k`` continuations
from that prefix. Grading the ``k`` completed responses gives pass@k and maj@k of each branch
position: if exploration pays off early in a response, branching early recovers more correct
answers than branching late, which is what EAD's high early temperature spends it on.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from calmrl.data import Problem
from calmrl.eval.runner import ProblemResult, compute_metrics, score_problem
from calmrl.rewards import Verifier
from calmrl.sampling import Method, RolloutBackend, Rollouts


@dataclass
class Branching:
    position: int
    problems: list[ProblemResult]
    metrics: dict[str, dict[str, float]]


def prompt_tokens(rollouts: Rollouts, row: int) -> list[int]:
    """The prompt a row was sampled from, without its left padding."""
    return rollouts.prompt_ids[row][rollouts.prompt_mask[row].bool()].tolist()


def response_tokens(rollouts: Rollouts, row: int) -> list[int]:
    return rollouts.response_ids[row][rollouts.response_mask[row].bool()].tolist()


def fork(
    backend: RolloutBackend,
    tokenizer: object,
    problems: Sequence[Problem],
    prompts: Sequence[str],
    verifier: Verifier,
    *,
    positions: Sequence[int],
    k: int,
    method: Method,
    max_new_tokens: int,
    reference_tau: float | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[Rollouts, list[Branching]]:
    """The reference rollouts and, per branch position, the graded continuations.

    ``reference_tau`` None: greedy references (the argmax at every step, as a tau -> 0 limit,
    via a tiny constant temperature). A position past a reference's end branches at its end.
    """
    tau = 1e-4 if reference_tau is None else reference_tau
    reference = backend.generate(
        list(prompts), Method("constant", {"tau": tau}), n=1, max_new_tokens=max_new_tokens,
        seed=seed,
    )  # fmt: skip
    branchings = []
    for position in positions:
        prefixes, kept = [], []
        for i in range(len(problems)):
            response = response_tokens(reference, i)
            kept.append(response[: min(position, len(response))])
            prefixes.append(prompt_tokens(reference, i) + kept[-1])
        rollouts = backend.generate(
            prefixes, method, n=k, max_new_tokens=max(1, max_new_tokens - position),
            seed=seed + 1 + position, prompt_indices=list(range(len(problems))),
        )  # fmt: skip
        results = []
        for i, problem in enumerate(problems):
            head = tokenizer.decode(kept[i], skip_special_tokens=True)  # type: ignore[attr-defined]
            texts = [head + rollouts.texts[r] for r in range(i * k, (i + 1) * k)]
            results.append(score_problem(problem, texts, verifier))
        ks = sorted({1, k})
        branchings.append(Branching(position, results, compute_metrics(results, ks, seed=seed)))
        if progress is not None:
            progress(position)
    return reference, branchings


def write_csv(branchings: Sequence[Branching], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["position", "metric", "mean", "lo", "hi"])
        for b in branchings:
            for name, value in b.metrics.items():
                writer.writerow([b.position, name, value["mean"], value["lo"], value["hi"]])


def plot(branchings: Sequence[Branching], path: Path, *, k: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.5, 4))
    x = [b.position for b in branchings]
    for name in (f"pass@{k}", f"maj@{k}", "pass@1"):
        values = [b.metrics[name] for b in branchings]
        axis.plot(x, [v["mean"] for v in values], marker="o", label=name)
        axis.fill_between(x, [v["lo"] for v in values], [v["hi"] for v in values], alpha=0.15)
    axis.set_xlabel("branch position t (tokens of the reference kept)")
    axis.set_ylabel("accuracy of the branches; band: 95% CI")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
