"""The comparison's report: per-seed means and paired differences equal a direct computation."""

import numpy as np
import pytest

from calmrl.eval.metrics import bootstrap_ci, pass_at_k
from calmrl.eval.runner import EvalResult, ProblemResult
from calmrl.io import write_json


@pytest.fixture(scope="module")
def comparison(load_benchmark):
    return load_benchmark("rl_comparison")


def fake_eval(correct: list[int], n: int = 4) -> dict:
    problems = []
    for i, c in enumerate(correct):
        sizes = [size for size in (c, n - c) if size]  # the right class first, then one wrong
        problems.append(
            ProblemResult(id=f"p{i:02d}", n=n, correct=c, class_sizes=sizes,
                          correct_class=0 if c else -1, mean_length=3.0, sample="")
        )  # fmt: skip
    return EvalResult(method="constant", n=n, ks=[1, n], problems=problems).to_dict()


def test_report_pairs_problems_and_seeds(comparison, tmp_path):
    rng = np.random.default_rng(0)
    counts = {}
    for name in ("constant-1.0", "ead-tis"):
        for seed in (0, 1):
            counts[name, seed] = rng.integers(0, 5, size=6).tolist()
            path = comparison.run_dir(tmp_path, name, seed)
            write_json(path / "eval_after.json", fake_eval(counts[name, seed]))
            write_json(path / "eval_before.json", fake_eval([1] * 6))
    text = comparison.report(tmp_path, ["constant-1.0", "ead-tis"], [0, 1], 4)

    def per_seed_mean(name, k):
        return np.mean([pass_at_k(4, np.array(counts[name, s]), k).mean() for s in (0, 1)])

    assert f"{per_seed_mean('ead-tis', 1):.3f} [" in text
    assert f"{per_seed_mean('constant-1.0', 4):.3f} [" in text
    diffs = np.concatenate([
        pass_at_k(4, np.array(counts["ead-tis", s]), 1)
        - pass_at_k(4, np.array(counts["constant-1.0", s]), 1)
        for s in (0, 1)
    ])  # fmt: skip
    mean, lo, hi = bootstrap_ci(diffs)
    assert f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]" in text
    assert "| before training | 0.250 [0.250, 0.250]" in text  # one correct of 4, every problem


def test_variants_are_valid_configs(comparison):
    from calmrl.config import load_config

    assert comparison.BASELINE in comparison.VARIANTS and len(comparison.VARIANTS) == 5
    for overrides in [*comparison.VARIANTS.values(), *comparison.EXTRA_VARIANTS.values()]:
        load_config(None, [*overrides, "train.steps=1"])  # raises on a bad field or value
