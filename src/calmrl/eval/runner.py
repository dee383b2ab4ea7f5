"""Evaluate a sampling method on problems: n samples each, verified, pass@k / worst@k / maj@k.

Per problem we keep ``n`` (samples) and ``c`` (correct), and for maj@k the sizes of the
answer classes (answers grouped by the verifier's equivalence, not by string) and which class
is correct. Every metric is averaged over problems with a bootstrap confidence interval.

With ``keep_responses`` the sampled texts are stored too, so that `rescore` can grade the same
samples with another verifier (e.g. strict ``\\boxed{}`` and last-number fallback) for free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from calmrl.data import Problem
from calmrl.eval.metrics import bootstrap_ci, maj_at_k, mean_at_k, pass_at_k, worst_at_k
from calmrl.rewards import Verifier
from calmrl.rl.distributed import World
from calmrl.sampling import Method, RolloutBackend


@dataclass
class ProblemResult:
    id: str
    n: int
    correct: int
    class_sizes: list[int]  # sizes of the answer equivalence classes (no-answer excluded)
    correct_class: int  # index into class_sizes of the class equal to the gold, -1 if none
    mean_length: float
    sample: str  # first response, for eyeballing
    responses: list[str] = field(default_factory=list)  # all n, only with keep_responses


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
        """JSON-able, floats rounded to 6 decimals (bootstrap bounds carry no more)."""
        return _rounded(asdict(self))

    @staticmethod
    def from_dict(data: dict[str, Any]) -> EvalResult:
        problems = [ProblemResult(**p) for p in data["problems"]]
        return EvalResult(**{**data, "problems": problems})


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def per_problem_metrics(problems: Sequence[ProblemResult], k: int) -> dict[str, np.ndarray]:
    """pass@k, worst@k, mean@k and maj@k of each problem (e.g. for paired comparisons)."""
    n = np.array([p.n for p in problems])
    c = np.array([p.correct for p in problems])
    maj = [maj_at_k(p.class_sizes, p.correct_class, p.n, k) for p in problems]
    return {
        f"pass@{k}": np.asarray(pass_at_k(n, c, k), dtype=float),
        f"worst@{k}": np.asarray(worst_at_k(n, c, k), dtype=float),
        f"mean@{k}": np.asarray(mean_at_k(n, c, k), dtype=float),
        f"maj@{k}": np.asarray(maj, dtype=float),
    }


def compute_metrics(
    problems: Sequence[ProblemResult], ks: Sequence[int], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Every metric at every k: mean over problems and a 95% bootstrap interval."""
    out: dict[str, dict[str, float]] = {}
    for k in ks:
        for name, values in per_problem_metrics(problems, k).items():
            mean, lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
            out[name] = {"mean": mean, "lo": lo, "hi": hi}
    return out


def score_problem(
    problem: Problem,
    texts: Sequence[str],
    verifier: Verifier,
    *,
    mean_length: float = 0.0,
    keep_responses: bool = False,
) -> ProblemResult:
    """Grade the ``n`` responses of one problem and group their answers for maj@k."""
    flags = verifier.verify(list(texts), [problem.answer] * len(texts))
    labels = verifier.group([verifier.extract(t) for t in texts])
    voted = [lab for lab in labels if lab >= 0]
    sizes = np.bincount(voted).tolist() if voted else []
    # The verifier's equivalence need not be transitive, so correct samples could in principle
    # land in several classes; the class holding most of them stands for the gold.
    hits = np.bincount([lab for lab, ok in zip(labels, flags, strict=True) if ok and lab >= 0])
    return ProblemResult(
        id=problem.id,
        n=len(texts),
        correct=int(sum(flags)),
        class_sizes=sizes,
        correct_class=int(hits.argmax()) if hits.size else -1,
        mean_length=mean_length,
        sample=texts[0],
        responses=list(texts) if keep_responses else [],
    )


def evaluate(
    backend: RolloutBackend,
    problems: Sequence[Problem],
    method: Method,
    *,
    prompts: Sequence[str],
    verifier: Verifier,
    n: int,
    ks: Sequence[int],
    max_new_tokens: int,
    seed: int = 0,
    chunk_rows: int = 64,
    label: str = "",
    keep_responses: bool = False,
    progress: Callable[[int, float], None] | None = None,
    world: World | None = None,
) -> EvalResult:
    """Sample ``n`` responses per problem with ``method`` through ``backend`` and score them.

    Under torchrun (``world``) each rank evaluates the problems it owns and every rank gets
    all the results, in problem order: the numbers equal one process's.

    Problem ``i`` is prompt index ``i`` of the per-row random streams, so the samples do not
    depend on how problems are chunked or split. ``progress(problems_done, running_accuracy)``
    is called after each chunk of about ``chunk_rows`` rows.
    """
    if not problems:
        raise ValueError("eval: no problems to evaluate")
    if len(prompts) != len(problems):
        raise ValueError(f"prompts: got {len(prompts)} for {len(problems)} problems")
    check_ks(ks, n)
    world = world or World()
    mine = [i for i in range(len(problems)) if world.owns(i)]  # problems split over ranks
    chunk = max(1, chunk_rows // n)
    results: list[tuple[int, ProblemResult]] = []
    for start in range(0, len(mine), chunk):
        part = mine[start : start + chunk]
        rollouts = backend.generate(
            [prompts[i] for i in part],
            method,
            n=n,
            max_new_tokens=max_new_tokens,
            seed=seed,
            prompt_indices=part,
        )
        lengths = rollouts.response_lengths.tolist()
        for offset, i in enumerate(part):
            rows = range(offset * n, (offset + 1) * n)  # a prompt's n rows are adjacent
            texts = [rollouts.texts[r] for r in rows]
            mean_length = float(np.mean([lengths[r] for r in rows]))
            scored = score_problem(
                problems[i], texts, verifier, mean_length=mean_length, keep_responses=keep_responses
            )
            results.append((i, scored))
        if progress is not None:
            correct = sum(p.correct for _, p in results)
            progress(len(results), correct / (len(results) * n))
    gathered = sorted((pair for part in world.gather(results) for pair in part), key=lambda x: x[0])
    ordered = [scored for _, scored in gathered]
    result = EvalResult(method=label, n=n, ks=list(ks), problems=ordered)
    result.metrics = compute_metrics(ordered, ks, seed=seed)
    return result


def rescore(
    result: EvalResult, problems: Sequence[Problem], verifier: Verifier, *, seed: int = 0
) -> EvalResult:
    """Grade the stored responses of ``result`` again with another verifier (no sampling)."""
    by_id = {p.id: p for p in problems}
    missing = [p.id for p in result.problems if not p.responses or p.id not in by_id]
    if missing:
        raise ValueError(
            f"rescore: problem {missing[0]!r} has no stored responses or no gold; "
            "evaluate with keep_responses=True and pass the same problems"
        )
    rescored = [
        score_problem(
            by_id[p.id], p.responses, verifier, mean_length=p.mean_length, keep_responses=True
        )
        for p in result.problems
    ]
    return replace(
        result, problems=rescored, metrics=compute_metrics(rescored, result.ks, seed=seed)
    )


def check_ks(ks: Sequence[int], n: int) -> None:
    if not ks:
        raise ValueError("k: give at least one k")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"k: values {bad} must lie in [1, n={n}]")
