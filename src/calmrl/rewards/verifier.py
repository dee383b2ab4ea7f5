"""Math answer verification with Math-Verify, bounded in time and safe in threads and processes.

A response's answer is the content of its last ``\\boxed{}`` (optionally the last number when
there is none). Comparing it with the gold goes through three stages, cheapest first:

1. exact string or integer match, in the calling thread (most GSM8K / arithmetic answers);
2. pre-checks that reject inputs known to make sympy hang or crash (over-long strings, deep
   nesting, numeric power towers such as ``9^{9^{9^9}}``, huge exponents or factorials);
3. Math-Verify in a pool of worker processes with a per-item deadline (`timeout_s`): a worker
   that overruns it is killed and replaced, and its item scores as incorrect.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence

from calmrl.rewards._pool import WorkerPool
from calmrl.rewards._worker import check
from calmrl.rewards.extract import as_integer, extract_boxed, extract_last_number, normalize_gold

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


def _quick_equal(a: str, b: str) -> bool | None:
    """Decide without Math-Verify when both answers are identical or both are plain integers."""
    if a.strip() == b.strip():
        return True
    ia, ib = as_integer(a), as_integer(b)
    return ia == ib if ia is not None and ib is not None else None


class MathVerifier:
    """Batch math reward: ``verifier(responses, golds) -> list[float]``.

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
    ) -> None:
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        if num_workers < 0 or timeout_s <= 0:
            raise ValueError("num_workers must be >= 0 and timeout_s > 0")
        self.correct, self.incorrect = correct, incorrect
        self.format_bonus, self.format_penalty = format_bonus, format_penalty
        self.number_fallback = number_fallback
        self.timeout_s, self.num_workers = timeout_s, num_workers
        self.max_answer_chars = max_answer_chars
        self._pool: WorkerPool | None = None
        self._pool_lock = threading.Lock()

    def extract(self, response: str) -> str | None:
        """The answer this verifier reads from `response`, or None."""
        answer = extract_boxed(response)
        if answer is None and self.number_fallback:
            answer = extract_last_number(response)
        return answer

    def verify(self, responses: Sequence[str], golds: Sequence[str]) -> list[bool]:
        """Whether each response's answer matches its gold."""
        if len(responses) != len(golds):
            raise ValueError(f"got {len(responses)} responses but {len(golds)} golds")
        answers = [self.extract(r) for r in responses]
        pairs = [(normalize_gold(g), a) for g, a in zip(golds, answers, strict=True)]
        checked = self._compare("verify", [p for p in pairs if p[1] is not None])
        it = iter(checked)
        return [a is not None and next(it) for _, a in pairs]

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

    def _compare(self, op: str, pairs: list[tuple[str, str]]) -> list[bool]:
        results = [False] * len(pairs)
        requests, where = [], []
        for i, (a, b) in enumerate(pairs):
            quick = _quick_equal(a, b)
            if quick is not None:
                results[i] = quick
            elif is_safe_answer(a, self.max_answer_chars) and is_safe_answer(
                b, self.max_answer_chars
            ):
                requests.append((op, a, b))
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
