"""Evaluate a sampling method on problems: n samples each, verified, pass@k / worst@k / maj@k.

Per problem we keep ``n`` (samples) and ``c`` (correct), and for maj@k the sizes of the
answer classes (answers grouped by the verifier's equivalence, not by string) and which class
is correct. Every metric is averaged over problems with a bootstrap confidence interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from calmrl.data import Problem
from calmrl.eval.metrics import bootstrap_ci, maj_at_k, mean_at_k, pass_at_k, worst_at_k
from calmrl.sampling import TokenSampler, generate


@dataclass
class ProblemResult:
    id: str
    n: int
    correct: int
    class_sizes: list[int]  # sizes of the answer equivalence classes (no-answer excluded)
    correct_class: int  # index into class_sizes of the class equal to the gold, -1 if none
    mean_length: float
    sample: str  # first response, for eyeballing


@dataclass
class EvalResult:
    method: str
    n: int
    ks: list[int]
    problems: list[ProblemResult]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def flat_metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{name}": value["mean"] for name, value in self.metrics.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> EvalResult:
        problems = [ProblemResult(**p) for p in data["problems"]]
        return EvalResult(**{**data, "problems": problems})


def compute_metrics(
    problems: Sequence[ProblemResult], ks: Sequence[int], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Every metric at every k: mean over problems and a 95% bootstrap interval."""
    n = np.array([p.n for p in problems])
    c = np.array([p.correct for p in problems])
    out: dict[str, dict[str, float]] = {}
    for k in ks:
        per_problem = {
            f"pass@{k}": pass_at_k(n, c, k),
            f"worst@{k}": worst_at_k(n, c, k),
            f"mean@{k}": mean_at_k(n, c, k),
            f"maj@{k}": np.array(
                [maj_at_k(p.class_sizes, p.correct_class, p.n, k) for p in problems], dtype=float
            ),
        }
        for name, values in per_problem.items():
            mean, lo, hi = bootstrap_ci(np.asarray(values, dtype=float), n_boot=n_boot, seed=seed)
            out[name] = {"mean": float(mean), "lo": float(lo), "hi": float(hi)}
    return out


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    sampler: TokenSampler,
    *,
    prompts: Sequence[str],
    reward_fn: Any,
    n: int,
    ks: Sequence[int],
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int | None = None,
    method: str = "",
    progress: Callable[[int, float], None] | None = None,
) -> EvalResult:
    """Sample ``n`` responses per problem with ``sampler`` and score them.

    ``reward_fn`` must offer ``verify(responses, golds) -> list[bool]`` and
    ``extract(response) -> str | None`` and ``group(answers) -> list[int]`` (``MathVerifier``).
    ``progress(problems_done, running_accuracy)`` is called after each chunk of problems.
    """
    if not problems:
        raise ValueError("eval: no problems to evaluate")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"k: values {bad} must lie in [1, n={n}]")
    chunk = max(1, (batch_size or 64) // n)
    results: list[ProblemResult] = []
    correct_total = 0
    for start in range(0, len(problems), chunk):
        part = list(problems[start : start + chunk])
        rollouts = generate(
            model,
            tokenizer,
            list(prompts[start : start + chunk]),
            sampler,
            n=n,
            max_new_tokens=max_new_tokens,
            seed=seed + start,
        )
        groups = rollouts.group_index.tolist()
        golds = [part[g].answer for g in groups]
        flags = reward_fn.verify(rollouts.texts, golds)
        lengths = rollouts.response_lengths.tolist()
        for i, problem in enumerate(part):
            rows = [r for r, g in enumerate(groups) if g == i]
            texts = [rollouts.texts[r] for r in rows]
            answers = [reward_fn.extract(t) for t in texts]
            labels = reward_fn.group(answers)
            sizes = (
                np.bincount([lab for lab in labels if lab >= 0]).tolist()
                if any(lab >= 0 for lab in labels)
                else []
            )
            correct_labels = {labels[j] for j, r in enumerate(rows) if flags[r] and labels[j] >= 0}
            correct = sum(flags[r] for r in rows)
            results.append(
                ProblemResult(
                    id=problem.id,
                    n=n,
                    correct=int(correct),
                    class_sizes=sizes,
                    correct_class=min(correct_labels) if correct_labels else -1,
                    mean_length=float(np.mean([lengths[r] for r in rows])),
                    sample=texts[0],
                )
            )
            correct_total += correct
        if progress is not None:
            progress(len(results), correct_total / (len(results) * n))
    result = EvalResult(method=method, n=n, ks=list(ks), problems=results)
    result.metrics = compute_metrics(results, ks, seed=seed)
    return result
