"""Math answer verification with Math-Verify, bounded in time and safe in threads and processes.

A response's answer is the content of its last ``\\boxed{}`` (optionally the last number when
there is none); when the gold lists several answers, the final boxes joined into one list are
tried as well. Comparing it with the gold goes through three stages, cheapest first:

1. exact string, integer or scientific-notation number match, in the calling thread (most
   GSM8K / arithmetic answers);
2. pre-checks that reject inputs known to make sympy hang or crash (over-long strings, deep
   nesting, numeric power towers such as ``9^{9^{9^9}}``, huge exponents or factorials);
3. Math-Verify in a pool of worker processes with a per-item deadline (`timeout_s`): a worker
   that overruns it is killed and replaced, and its item scores as incorrect.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import inspect
import os
import re
import threading
from collections.abc import Sequence
from decimal import Decimal

from calmrl.rewards._pool import WorkerPool
from calmrl.rewards._worker import check, make_op
from calmrl.rewards.extract import (
    as_integer,
    as_number,
    count_answers,
    extract_boxed,
    extract_final_answers,
    extract_last_number,
    normalize_gold,
    scientific_to_latex,
    split_units,
    strip_units,
)

MAX_NESTING = 20  # brackets deeper than any real answer; deep nesting overflows sympy's parser
_NUMERIC_TOWER = re.compile(r"\d\s*\}?\s*(?:\^|\*\*)\s*\{?\s*\d+\s*\}?\s*(?:\^|\*\*)")
_HUGE_EXPONENT = re.compile(r"(?:\^|\*\*)\s*\{?\s*\d{6,}")
_HUGE_FACTORIAL = re.compile(r"\d{5,}\s*!")


def nesting_depth(text: str) -> int:
    """Deepest nesting of (), [] and {} in `text` (escaped or not)."""
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest


def is_safe_answer(answer: str, max_chars: int = 1000) -> bool:
    """Cheap pre-check: False for answers that could make symbolic verification blow up."""
    return not (
        len(answer) > max_chars
        or nesting_depth(answer) > MAX_NESTING
        or _NUMERIC_TOWER.search(answer)
        or _HUGE_EXPONENT.search(answer)
        or _HUGE_FACTORIAL.search(answer)
    )


def _quick_equal(a: str, b: str, float_rounding: int) -> bool | None:
    """Decide without Math-Verify when both answers are identical, integers, or plain numbers
    of which one is in scientific notation (None: undecided).

    Scientific notation is compared to a relative ``10**-float_rounding``: Math-Verify rounds
    floats to `float_rounding` decimal places, which makes every pair of numbers below
    ``1e-6`` equal.
    """
    if a.strip() == b.strip():
        return True
    ia, ib = as_integer(a), as_integer(b)
    if ia is not None and ib is not None:
        return ia == ib
    na, nb = as_number(a), as_number(b)
    if na is None or nb is None or not (na[1] or nb[1]):
        return None
    (x, _), (y, _) = na, nb
    return abs(x - y) <= Decimal(10) ** -float_rounding * max(abs(x), abs(y))


@functools.lru_cache(maxsize=4096)
def _read_gold(gold: str) -> tuple[str, tuple[str, ...], int]:
    """``(answer, units, number of answers)`` of a normalised gold; cached because each gold
    is read once per sample of its problem."""
    value, units = split_units(gold)
    return value, units, count_answers(value)


# `math_verify.verify`'s defaults (0.7 to 0.9); `allow_set_relation_comp` came in 0.8.
_MATH_VERIFY_DEFAULTS = {
    "float_rounding": 6,
    "numeric_precision": 15,
    "strict": True,
    "allow_set_relation_comp": False,
}


def _math_verify_version() -> tuple[int, ...]:
    version = importlib.metadata.version("math-verify")
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, name: str, value: object, what: str) -> None:
    if not ok:
        raise ValueError(f"MathVerifier: {name} must be {what}, got {value!r}")


def _unknown_parameter(name: str) -> str:
    """A one-line error for an unknown keyword, with the closest real parameter name."""
    known = [p for p in inspect.signature(MathVerifier).parameters if p != "unknown"]
    words = set(name.split("_"))
    close = difflib.get_close_matches(name, known, n=1) or [
        p for p in known if len(words & set(p.split("_"))) >= 2
    ]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"MathVerifier: unknown parameter {name!r}{hint}; parameters: {', '.join(known)}"


class MathVerifier:
    """Batch math reward: ``verifier(responses, golds) -> list[float]``.

    Golds are normalised by `normalize_gold`: lists of answers and units are accepted. A gold
    with several answers (``"-2, 1"``) needs all of them, in one box or in one final box each.

    Args:
        correct, incorrect: reward for a correct / incorrect (or missing) answer, e.g. 1/0 or 1/-1.
        format_bonus: added when the response contains a ``\\boxed{}`` answer.
        format_penalty: subtracted when it does not.
        number_fallback: without a box, take the last number in the response as its answer
            (for weak models that rarely box).
        timeout_s: deadline for one comparison in a worker process.
        num_workers: worker processes (default ``min(4, cpu_count)``); 0 verifies in the calling
            thread with the pre-checks as the only protection (no deadline).
        max_answer_chars: longer answers are scored incorrect without parsing.
        float_rounding: decimal places to which Math-Verify rounds floats before comparing
            (``0.333333`` matches ``1/3`` at 6); numbers in scientific notation agree to a
            relative ``10**-float_rounding``.
        numeric_precision: significant digits of Math-Verify's numeric evaluation.
        strict: False lets Math-Verify match variables by position (``f(x)`` = ``f(y)``) and
            compare sets with tuples.
        allow_set_relation_comp: also compare a relation in the response with a set in the gold
            (``-2 \\le x \\le 7`` for ``[-2, 7]``); the other way round is always allowed.
    The last four are `math_verify.verify`'s parameters of the same names.
    """

    def __init__(
        self,
        *,
        correct: float = 1.0,
        incorrect: float = 0.0,
        format_bonus: float = 0.0,
        format_penalty: float = 0.0,
        number_fallback: bool = False,
        timeout_s: float = 5.0,
        num_workers: int | None = None,
        max_answer_chars: int = 1000,
        float_rounding: int = 6,
        numeric_precision: int = 15,
        strict: bool = True,
        allow_set_relation_comp: bool = False,
        **unknown: object,
    ) -> None:
        if unknown:
            raise ValueError(_unknown_parameter(next(iter(unknown))))
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        for name, value in (
            ("correct", correct),
            ("incorrect", incorrect),
            ("format_bonus", format_bonus),
            ("format_penalty", format_penalty),
        ):
            _require(_is_real(value), name, value, "a number")
        for name, value in (
            ("number_fallback", number_fallback),
            ("strict", strict),
            ("allow_set_relation_comp", allow_set_relation_comp),
        ):
            _require(isinstance(value, bool), name, value, "true or false")
        _require(_is_real(timeout_s) and timeout_s > 0, "timeout_s", timeout_s, "a number > 0")
        _require(
            _is_int(num_workers) and num_workers >= 0, "num_workers", num_workers, "an int >= 0"
        )
        _require(
            _is_int(max_answer_chars) and max_answer_chars > 0,
            "max_answer_chars",
            max_answer_chars,
            "an int > 0",
        )
        _require(
            _is_int(float_rounding) and float_rounding >= 0,
            "float_rounding",
            float_rounding,
            "an int >= 0",
        )
        _require(
            _is_int(numeric_precision) and numeric_precision > 0,
            "numeric_precision",
            numeric_precision,
            "an int > 0",
        )
        self.correct, self.incorrect = correct, incorrect
        self.format_bonus, self.format_penalty = format_bonus, format_penalty
        self.number_fallback = number_fallback
        self.timeout_s, self.num_workers = timeout_s, num_workers
        self.max_answer_chars = max_answer_chars
        self.float_rounding, self.numeric_precision = float_rounding, numeric_precision
        self.strict, self.allow_set_relation_comp = strict, allow_set_relation_comp
        if allow_set_relation_comp and _math_verify_version() < (0, 8):
            raise ValueError("MathVerifier: allow_set_relation_comp needs math-verify >= 0.8")
        options = {
            "float_rounding": float_rounding,
            "numeric_precision": numeric_precision,
            "strict": strict,
            "allow_set_relation_comp": allow_set_relation_comp,
        }
        # Only the options that differ from Math-Verify's defaults travel, so that the defaults
        # also work with a math-verify that lacks one of them.
        options = {k: v for k, v in options.items() if v != _MATH_VERIFY_DEFAULTS[k]}
        self._ops = {mode: make_op(mode, **options) for mode in ("verify", "equiv")}
        self._pool: WorkerPool | None = None
        self._pool_lock = threading.Lock()

    def extract(self, response: str) -> str | None:
        """The answer this verifier reads from `response`, or None."""
        answer = extract_boxed(response)
        if answer is None and self.number_fallback:
            answer = extract_last_number(response)
        return answer

    def _candidates(self, response: str, n_answers: int) -> list[str]:
        """Answers to try against a gold with `n_answers` answers: the last box, and for
        several answers the final boxes as one list (one box per answer is common)."""
        answer = self.extract(response)
        if answer is None:
            return []
        if n_answers < 2:
            return [answer]
        joined = ", ".join(extract_final_answers(response, n_answers))
        return [answer, joined] if joined and joined != answer else [answer]

    def verify(self, responses: Sequence[str], golds: Sequence[str]) -> list[bool]:
        """Whether each response's answer matches its gold."""
        if len(responses) != len(golds):
            raise ValueError(f"got {len(responses)} responses but {len(golds)} golds")
        pairs: list[tuple[str, str]] = []
        owners: list[int] = []
        for i, (response, gold) in enumerate(zip(responses, golds, strict=True)):
            value, units, n_answers = _read_gold(normalize_gold(gold))
            for answer in self._candidates(response, n_answers):
                if units and len(answer) <= self.max_answer_chars:
                    answer = strip_units(answer, units)
                pairs.append((value, answer))
                owners.append(i)
        results = [False] * len(responses)
        for i, ok in zip(owners, self._compare("verify", pairs), strict=True):
            results[i] = results[i] or ok
        return results

    def __call__(self, responses: Sequence[str], golds: Sequence[str]) -> list[float]:
        rewards = []
        for response, ok in zip(responses, self.verify(responses, golds), strict=True):
            boxed = extract_boxed(response) is not None
            rewards.append(
                (self.correct if ok else self.incorrect)
                + (self.format_bonus if boxed else -self.format_penalty)
            )
        return rewards

    def equivalent(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Whether the two answer strings of each pair are mathematically equivalent."""
        return self._compare("equiv", list(pairs))

    def group(self, answers: Sequence[str | None]) -> list[int]:
        """Label answers by equivalence class (0, 1, ... in order of first appearance; -1: None).

        Greedy: each answer joins the first class whose first member it is equivalent to.
        Identical strings are grouped without calling the verifier.
        """
        labels: list[int] = []
        representatives: list[str] = []
        seen: dict[str, int] = {}
        for answer in answers:
            if answer is None:
                labels.append(-1)
                continue
            key = answer.strip()
            if key not in seen:
                matches = self.equivalent([(rep, answer) for rep in representatives])
                if True in matches:
                    seen[key] = matches.index(True)
                else:
                    seen[key] = len(representatives)
                    representatives.append(answer)
            labels.append(seen[key])
        return labels

    def _compare(self, mode: str, pairs: list[tuple[str, str]]) -> list[bool]:
        results = [False] * len(pairs)
        requests, where = [], []
        for i, (a, b) in enumerate(pairs):
            quick = _quick_equal(a, b, self.float_rounding)
            if quick is not None:
                results[i] = quick
                continue
            # After the rewrite, so that `1e999999` meets the huge-exponent check.
            a, b = scientific_to_latex(a), scientific_to_latex(b)
            if is_safe_answer(a, self.max_answer_chars) and is_safe_answer(
                b, self.max_answer_chars
            ):
                requests.append((self._ops[mode], a, b))
                where.append(i)
        if self.num_workers == 0:
            answers = [check(*request) for request in requests]
        else:
            answers = self._get_pool().run(requests)
        for i, ok in zip(where, answers, strict=True):
            results[i] = ok
        return results

    def _get_pool(self) -> WorkerPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = WorkerPool(self.num_workers, self.timeout_s)
            return self._pool

    def close(self) -> None:
        """Stop the worker processes (they are also stopped at interpreter exit)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    """The shared verifier behind `math_reward` and `answers_equivalent` (1/0 rewards)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathVerifier()
        return _default


def math_reward(response: str, gold: str) -> float:
    """1.0 when the last ``\\boxed{}`` answer of `response` matches `gold`, else 0.0."""
    return default_verifier()([response], [gold])[0]


def answers_equivalent(a: str, b: str) -> bool:
    """Whether two answer strings (e.g. extracted box contents) are mathematically equivalent."""
    return default_verifier().equivalent([(a, b)])[0]
