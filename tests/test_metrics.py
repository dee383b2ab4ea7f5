"""Metrics: pass@k, worst@k, mean@k, maj@k against brute force and exact arithmetic."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest

from calmrl.eval.metrics import bootstrap_ci, maj_at_k, mean_at_k, pass_at_k, worst_at_k


def subsets(n: int, k: int):
    return itertools.combinations(range(n), k)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_and_worst_match_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            correct = set(range(c))  # which samples are correct does not matter
            hits = [len(correct.intersection(s)) for s in subsets(n, k)]
            assert pass_at_k(n, c, k) == pytest.approx(np.mean([h > 0 for h in hits]), abs=1e-15)
            assert worst_at_k(n, c, k) == pytest.approx(np.mean([h == k for h in hits]), abs=1e-15)


def test_large_n_is_exact():
    n = 1024
    for c, k in [(1, 1), (1, 512), (3, 1000), (512, 512), (1000, 16), (1023, 1024), (0, 7)]:
        p_exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        w_exact = Fraction(math.comb(c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == float(p_exact)  # correctly rounded, not just close
        assert worst_at_k(n, c, k) == float(w_exact)
    assert pass_at_k(n, 1, 1) == pytest.approx(1 / 1024, rel=1e-15)  # no cancellation


def test_vectorised_over_problems():
    n = np.array([16, 16, 1024, 1024])
    c = np.array([0, 3, 10, 1024])
    out = pass_at_k(n, c, 4)
    assert isinstance(out, np.ndarray) and out.shape == (4,)
    assert out.tolist() == [pass_at_k(int(a), int(b), 4) for a, b in zip(n, c, strict=True)]
    assert worst_at_k(n, c, np.array([1, 2, 3, 4])).shape == (4,)
    assert isinstance(pass_at_k(8, 2, 3), float)
    assert mean_at_k(n, c, 4).tolist() == (c / n).tolist()
    assert mean_at_k(10, 3) == 0.3


@pytest.mark.parametrize(
    "args, name",
    [((4, 2, 5), "k"), ((4, 5, 2), "c"), ((4, -1, 2), "c"), ((4, 2, 0), "k"), ((4.5, 2, 2), "n")],
)
def test_invalid_counts_raise(args, name):
    for fn in (pass_at_k, worst_at_k, mean_at_k):
        with pytest.raises(ValueError, match=f"^{name} must"):
            fn(*args)


def brute_force_maj(sizes: list[int], correct: list[bool], n: int, k: int) -> Fraction:
    labels = [c for c, m in enumerate(sizes) for _ in range(m)] + [-1] * (n - sum(sizes))
    total = Fraction(0)
    count = 0
    for subset in subsets(n, k):
        count += 1
        votes: dict[int, int] = {}
        for i in subset:
            if labels[i] >= 0:
                votes[labels[i]] = votes.get(labels[i], 0) + 1
        if votes:
            top = max(votes.values())
            winners = [c for c, v in votes.items() if v == top]
            total += Fraction(sum(correct[c] for c in winners), len(winners))
    return total / count


def test_maj_matches_enumeration():
    rng = random.Random(0)
    for _ in range(150):
        n = rng.randint(1, 10)
        answered = n - rng.randint(0, min(2, n - 1))  # a few samples without an answer
        sizes = []
        while sum(sizes) < answered:
            sizes.append(rng.randint(1, answered - sum(sizes)))
        correct = [rng.random() < 0.4 for _ in sizes]
        k = rng.randint(1, n)
        expected = brute_force_maj(sizes, correct, n, k)
        assert maj_at_k(sizes, correct, n, k) == pytest.approx(float(expected), abs=1e-12)


def test_maj_ties_split_credit():
    # Two classes of 2, k = 2: P(1-1 split) = 4/6 with half credit, P(both correct) = 1/6.
    assert maj_at_k([2, 2], 0, 4, 2) == pytest.approx(1 / 6 + 0.5 * 4 / 6)
    assert maj_at_k([2, 2], 0, 4, 4) == pytest.approx(0.5)


def test_maj_simple_cases():
    assert maj_at_k([3, 5], 0, 10, 1) == pytest.approx(0.3)  # maj@1 = share of the class
    assert maj_at_k([6], 0, 6, 3) == pytest.approx(1.0)
    assert maj_at_k([6], -1, 6, 3) == 0.0
    assert maj_at_k([], -1, 6, 3) == 0.0
    # Unanswered samples do not vote: the lone answer wins whenever it is drawn.
    assert maj_at_k([1], 0, 4, 2) == pytest.approx(0.5)


def test_maj_large_n_two_classes_closed_form():
    # One correct class of size a against one of size n - a: the correct class wins when it
    # draws more than half of k, and gets half credit for an exact half.
    n, a = 1024, 530
    for k in (7, 64, 301):
        ways = sum(
            Fraction(math.comb(a, x) * math.comb(n - a, k - x))
            * (1 if 2 * x > k else Fraction(1, 2) if 2 * x == k else 0)
            for x in range(k + 1)
        )
        assert maj_at_k([a, n - a], 0, n, k) == pytest.approx(
            float(ways / math.comb(n, k)), rel=1e-9
        )


def test_maj_large_n_three_classes_exact():
    n, sizes, k = 1024, [400, 380, 200], 40  # plus 44 unanswered samples
    expected = Fraction(0)
    for x in range(k + 1):
        for y in range(k + 1 - x):
            for z in range(k + 1 - x - y):
                ways = math.comb(400, x) * math.comb(380, y) * math.comb(200, z)
                ways *= math.comb(n - sum(sizes), k - x - y - z)
                top = max(x, y, z)
                if x == top and top > 0:
                    expected += Fraction(ways, [x, y, z].count(top))
    expected /= math.comb(n, k)
    assert maj_at_k(sizes, 0, n, k) == pytest.approx(float(expected), rel=1e-9)


def test_maj_many_singletons_is_stable():
    # 1024 distinct answers: every k-subset is a k-way tie, so maj@k = share of the class.
    assert maj_at_k([1] * 1024, 0, 1024, 512) == pytest.approx(1 / 1024, rel=1e-9)


def test_maj_vectorised_over_problems():
    sizes = [[3, 1], [2, 2], [4]]
    out = maj_at_k(sizes, [0, 1, -1], 4, 3)
    assert isinstance(out, np.ndarray) and out.shape == (3,)
    assert out.tolist() == [maj_at_k(s, c, 4, 3) for s, c in zip(sizes, [0, 1, -1], strict=True)]


@pytest.mark.parametrize(
    "args, match",
    [
        (([2, 2], 0, 3, 2), "class_sizes"),
        (([2, 0], 0, 4, 2), "class_sizes"),
        (([2, 2], 0, 4, 5), "k must"),
        (([2, 2], 2, 4, 2), "correct"),
        (([2, 2], [True], 4, 2), "correct"),
    ],
)
def test_maj_invalid_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        maj_at_k(*args)


def test_bootstrap_ci():
    rng = np.random.default_rng(1)
    values = rng.random(2000) < 0.3
    mean, lo, hi = bootstrap_ci(values, n_boot=2000, seed=0)
    assert (mean, lo, hi) == bootstrap_ci(values, n_boot=2000, seed=0)  # seeded
    assert lo < mean < hi
    half_width = 1.96 * math.sqrt(mean * (1 - mean) / values.size)  # normal approximation
    assert (hi - lo) / 2 == pytest.approx(half_width, rel=0.15)
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, float("nan")])
