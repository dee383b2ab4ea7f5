"""Evaluation metrics from n samples per problem, c of them correct (``docs/algorithms.md``).

- pass@k  = 1 - C(n-c, k) / C(n, k): some of k samples is correct (Chen et al. 2021, unbiased);
- worst@k = C(c, k) / C(n, k): all k samples are correct;
- mean@k  = c / n: the expected fraction of correct samples (the same for every k);
- maj@k: the majority answer of k samples is correct, as an expectation over all k-subsets.

pass@k and worst@k are exact: each distinct (n, c, k) is evaluated once with Python integers
(`math.comb`) and divided with correct rounding, so there is no overflow or cancellation at any
n. maj@k uses hypergeometric probabilities from log-factorials (all terms in [0, 1]).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike

Counts = int | ArrayLike
# maj@k skips vote counts rarer than this; the total error stays below k * 1e-17.
NEGLIGIBLE = 1e-17


def _as_int_array(name: str, x: Counts) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        if a.dtype.kind not in "fb" or not np.all(np.mod(a, 1) == 0):
            raise ValueError(f"{name} must hold integers, got {x!r}")
        a = a.astype(np.int64)
    return a


def _check_counts(n: Counts, c: Counts, k: Counts) -> tuple[np.ndarray, ...]:
    n, c, k = np.broadcast_arrays(*(_as_int_array(s, x) for s, x in (("n", n), ("c", c), ("k", k))))
    if np.any(k < 1):
        raise ValueError(f"k must be >= 1, got k={k.min()}")
    if np.any(k > n):
        raise ValueError(f"k must be <= n, got k={k.max()} with n={n[k > n].min()}")
    if np.any(c < 0) or np.any(c > n):
        raise ValueError(f"c must lie in [0, n], got c={c[(c < 0) | (c > n)].flat[0]}")
    return n, c, k


def _exact(
    fn: Callable[[int, int, int], float], n: Counts, c: Counts, k: Counts
) -> float | np.ndarray:
    """Apply exact `fn(n, c, k)` once per distinct triple; a float for scalar inputs."""
    n, c, k = _check_counts(n, c, k)
    triples = np.stack([n.ravel(), c.ravel(), k.ravel()], axis=1)
    unique, inverse = np.unique(triples, axis=0, return_inverse=True)
    values = np.array([fn(int(a), int(b), int(d)) for a, b, d in unique], dtype=float)
    out = values[inverse.ravel()].reshape(n.shape)
    return float(out) if out.ndim == 0 else out


def _pass(n: int, c: int, k: int) -> float:
    total = math.comb(n, k)
    return (total - math.comb(n - c, k)) / total  # int / int rounds correctly at any size


def _worst(n: int, c: int, k: int) -> float:
    return math.comb(c, k) / math.comb(n, k)


def pass_at_k(n: Counts, c: Counts, k: Counts) -> float | np.ndarray:
    """Probability that at least one of k samples (drawn without replacement) is correct."""
    return _exact(_pass, n, c, k)


def worst_at_k(n: Counts, c: Counts, k: Counts) -> float | np.ndarray:
    """Probability that all k samples (drawn without replacement) are correct."""
    return _exact(_worst, n, c, k)


def mean_at_k(n: Counts, c: Counts, k: Counts = 1) -> float | np.ndarray:
    """Expected fraction of correct samples among k: c / n for every k."""
    n, c, _ = _check_counts(n, c, k)
    out = c / n
    return float(out) if out.ndim == 0 else out


@functools.lru_cache(maxsize=16)
def _log_factorials(n: int) -> np.ndarray:
    return np.array([math.lgamma(i + 1) for i in range(n + 1)])


def _log_comb(lf: np.ndarray, a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """log C(a, b), and -inf where b < 0 or b > a."""
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    out = np.full(a.shape, -np.inf)
    ok = (b >= 0) & (b <= a)
    out[ok] = lf[a[ok]] - lf[b[ok]] - lf[a[ok] - b[ok]]
    return out


def _draw(f: np.ndarray, pool: int, m: int, v: int, lf: np.ndarray) -> np.ndarray:
    """Draw x votes for one rival class of size `m` out of the `pool` samples left.

    `f[r, t]` is the probability that r picks are still to be made and t rivals so far tie
    with the candidate's v votes. x follows the hypergeometric law given r,
    C(m, x) C(pool - m, r - x) / C(pool, r); x > v loses (dropped), x == v adds a tie.
    """
    rows = f.shape[0]
    left = np.arange(rows)  # r - x: the picks left after this class
    log_rest = _log_comb(lf, pool - m, left)
    # +inf where r > pool: those states have probability 0, and exp(-inf) must win over nan.
    log_total = _log_comb(lf, pool, np.arange(rows + v))
    log_total[np.isneginf(log_total)] = np.inf
    xs = np.arange(min(m, v - 1) + 1)
    weights = np.exp(
        log_rest[:, None] + _log_comb(lf, m, xs)[None, :] - log_total[left[:, None] + xs]
    )
    padded = np.concatenate([f, np.zeros((len(xs) - 1, f.shape[1]))])
    # windows[s, t, x] = f[s + x, t]: the state before drawing x of this class.
    windows = sliding_window_view(padded, len(xs), axis=0)
    out = np.einsum("stx,sx->st", windows, weights)
    if m >= v and rows > v and f.shape[1] > 1:
        s = left[: rows - v]
        tie = np.exp(log_rest[s] + _log_comb(lf, m, v) - log_total[s + v])
        # A tie needs v free picks per tying rival, so f[., T] never reaches t = T + 1.
        out[: len(s), 1:] += f[v:, :-1] * tie[:, None]
    return out


def _single_vote_credit(rivals: np.ndarray, pool: int, picks: int, lf: np.ndarray) -> float:
    """Credit of a candidate holding 1 vote when `picks` more samples are drawn from `pool`.

    It wins only if the s answered samples drawn all belong to different rival classes, and
    then ties with all s of them. q[s] = e_s(rivals) / C(S, s) is the probability that s of
    the S rival samples are in distinct classes (e_s: elementary symmetric polynomial of the
    class sizes); g classes of equal size m contribute C(g, j) m^j ways to pick j of them.
    """
    log_q = np.zeros(1)  # log q[s] over the classes seen so far
    seen = 0  # their samples
    sizes, counts = np.unique(rivals, return_counts=True)
    for m, g in zip(sizes.tolist(), counts.tolist(), strict=True):
        s = np.arange(min(picks, len(log_q) - 1 + g) + 1)[:, None]
        j = np.arange(min(picks, g) + 1)[None, :]
        before = s - j  # picks among the classes seen so far
        ok = (before >= 0) & (before < len(log_q))
        terms = np.full(ok.shape, -np.inf)
        terms[ok] = log_q[before[ok]] + _log_comb(lf, seen, before[ok])
        terms += _log_comb(lf, g, j) + j * math.log(m) - _log_comb(lf, seen + m * g, s)
        with np.errstate(divide="ignore"):
            log_q = np.log(np.exp(terms).sum(axis=1))
        seen += m * g
    s = np.arange(len(log_q))
    drawn = (
        _log_comb(lf, seen, s) + _log_comb(lf, pool - seen, picks - s) - _log_comb(lf, pool, picks)
    )
    return float(np.sum(np.exp(drawn + log_q) / (1 + s)))


def _win_probability(size: int, rivals: np.ndarray, n: int, k: int, lf: np.ndarray) -> float:
    """Probability that a class of `size` wins the vote of k of n samples (ties split)."""
    total = 0.0
    for v in range(1, min(size, k) + 1):
        log_p = _log_comb(lf, size, v) + _log_comb(lf, n - size, k - v) - _log_comb(lf, n, k)
        p_v = float(np.exp(log_p))
        if p_v < NEGLIGIBLE:
            continue
        if v == 1:
            total += p_v * _single_vote_credit(rivals, n - size, k - 1, lf)
            continue
        # Rivals smaller than v can never beat or tie v votes; nor can unanswered samples.
        contenders = rivals[rivals >= v]
        picks = k - v
        f = np.zeros((picks + 1, min(len(contenders), picks // v) + 1))
        f[picks, 0] = 1.0
        pool = n - size
        for m in contenders:
            f = _draw(f, pool, int(m), v, lf)
            pool -= int(m)
        total += p_v * float(f.sum(axis=0) @ (1.0 / np.arange(1, f.shape[1] + 1)))
    return total


def _maj_one(class_sizes: Sequence[int], correct: int | Sequence[bool], n: int, k: int) -> float:
    sizes = _as_int_array("class_sizes", class_sizes).ravel()
    if np.any(sizes < 1) or sizes.sum() > n:
        raise ValueError(f"class_sizes must be >= 1 and sum to at most n={n}, got {class_sizes}")
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, n={n}], got k={k}")
    if isinstance(correct, (int, np.integer)) and not isinstance(correct, bool):
        if not -1 <= correct < len(sizes):
            raise ValueError(f"correct must be a class index or -1, got {correct}")
        mask = np.arange(len(sizes)) == correct
    else:
        mask = np.asarray(correct, dtype=bool)
        if mask.shape != sizes.shape:
            raise ValueError(f"correct must have one flag per class, got {len(mask)}")
    lf = _log_factorials(n)
    return float(
        sum(
            _win_probability(int(sizes[j]), np.delete(sizes, j), n, k, lf)
            for j in np.flatnonzero(mask)
        )
    )


def maj_at_k(
    class_sizes: Sequence[int] | Sequence[Sequence[int]],
    correct: int | Sequence[bool] | Sequence[int | Sequence[bool]],
    n: Counts,
    k: int,
) -> float | np.ndarray:
    """Expected accuracy of majority voting over k of the n samples (all k-subsets equally likely).

    The answers of a problem are grouped into classes by the verifier; `class_sizes` are the
    class sizes and `correct` says which class is right: an index (-1: none) or one flag per
    class. The ``n - sum(class_sizes)`` samples without an answer do not vote, and a subset in
    which nobody votes scores 0.

    Ties: a class that gets the most votes together with t other classes earns 1 / (t + 1),
    i.e. the expected accuracy when ties are broken uniformly at random.

    One problem (flat `class_sizes`) gives a float; a list of problems (`class_sizes` a list of
    lists, `correct` and `n` per problem or shared) gives an array. The cost grows with k^2
    times the size of the correct class: milliseconds for small k, up to about a second for
    n = 1024, k = 512 with a few large classes.
    """
    if len(class_sizes) and isinstance(class_sizes[0], (Sequence, np.ndarray)):
        ns = np.broadcast_to(_as_int_array("n", n), (len(class_sizes),))
        if isinstance(correct, (int, np.integer)):
            correct = [correct] * len(class_sizes)
        return np.array(
            [_maj_one(s, c, int(m), k) for s, c, m in zip(class_sizes, correct, ns, strict=True)]
        )
    return _maj_one(class_sizes, correct, int(n), k)


def bootstrap_ci(
    per_problem_values: ArrayLike, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Mean over problems and its percentile-bootstrap (1 - alpha) interval (problems resampled)."""
    values = np.asarray(per_problem_values, dtype=float).ravel()
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("per_problem_values must be a non-empty array of finite numbers")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot} and {alpha}")
    rng = np.random.default_rng(seed)
    rows = max(1, (1 << 22) // values.size)  # bound the index matrix to ~32 MB
    means = np.concatenate(
        [
            values[rng.integers(0, values.size, size=(min(rows, n_boot - i), values.size))].mean(1)
            for i in range(0, n_boot, rows)
        ]
    )
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(values.mean()), float(lo), float(hi)
