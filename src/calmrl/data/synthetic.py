"""Built-in arithmetic tasks with exact answers, generated from a seed.

Named ``arith-{kind}-{difficulty}``, e.g. ``arith-add-1``. Difficulty (1-3) scales the operands:
- ``add``: two d-digit numbers;
- ``mul``: a 1-digit number (2-9) times a d-digit number;
- ``chain``: d+1 one-digit numbers joined by + and - (results may be negative);
- ``word``: a templated word problem with d-digit numbers.
Difficulty 1 is meant to be within reach of the tiny built-in model (SmolLM2-135M-Instruct
solves 1-digit addition about half the time with a 2-shot prompt).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from calmrl.data.problem import Problem

MAX_DIFFICULTY = 3
TASK_NAME = re.compile(r"arith-(?P<kind>[a-z]+)-(?P<difficulty>\d+)")

# (question, answer, worked solution without the final boxed line)
Example = tuple[str, int, str]


def _number(rng: random.Random, digits: int) -> int:
    low = 1 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _factor(rng: random.Random) -> int:
    return rng.randint(2, 9)  # 0 and 1 make trivial multiplications


def _add(rng: random.Random, difficulty: int) -> Example:
    a, b = _number(rng, difficulty), _number(rng, difficulty)
    return f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}."


def _mul(rng: random.Random, difficulty: int) -> Example:
    a, b = _factor(rng), _number(rng, difficulty)
    return f"What is {a} * {b}?", a * b, f"{a} * {b} = {a * b}."


def _chain(rng: random.Random, difficulty: int) -> Example:
    value = _number(rng, 1)
    expression = str(value)
    for _ in range(difficulty):
        sign, term = rng.choice((1, -1)), _number(rng, 1)
        value += sign * term
        expression += f" {'+' if sign > 0 else '-'} {term}"
    return f"What is {expression}?", value, f"{expression} = {value}."


_NAMES = ("Tom", "Ana", "Sam", "Mia", "Leo", "Zoe")
_ITEMS = ("apple", "pencil", "marble", "sticker", "book", "coin")


def _word(rng: random.Random, difficulty: int) -> Example:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = _number(rng, difficulty), _number(rng, difficulty)
    template = rng.randrange(3)
    if template == 0:
        question = (
            f"{name} has {a} {item}s and buys {b} more. How many {item}s does {name} have now?"
        )
        return question, a + b, f"{a} + {b} = {a + b}."
    if template == 1:  # starts from a + b so that the result is never negative
        question = f"{name} has {a + b} {item}s and gives away {b}. How many {item}s are left?"
        return question, a, f"{a + b} - {b} = {a}."
    k = _factor(rng)
    question = f"{name} buys {k} bags with {b} {item}s in each. How many {item}s is that in total?"
    return question, k * b, f"{k} * {b} = {k * b}."


GENERATORS: dict[str, Callable[[random.Random, int], Example]] = {
    "add": _add,
    "mul": _mul,
    "chain": _chain,
    "word": _word,
}
SYNTHETIC_TASKS = tuple(f"arith-{k}-{d}" for k in GENERATORS for d in range(1, MAX_DIFFICULTY + 1))


def _check(kind: str, difficulty: int) -> None:
    if kind not in GENERATORS:
        raise ValueError(f"unknown synthetic task kind {kind!r}: use one of {list(GENERATORS)}")
    if not 1 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be in 1..{MAX_DIFFICULTY}, got {difficulty}")


def boxed_solution(solution: str, answer: int) -> str:
    return f"{solution} The answer is \\boxed{{{answer}}}."


def synthetic_task(
    kind: str, n: int, seed: int = 0, difficulty: int = 1, split: str = "test"
) -> list[Problem]:
    """`n` problems of one kind; the same (kind, n, seed, difficulty, split) gives the same list.

    Different splits draw from independent streams, so a train and a test set do not share a
    generator state (small spaces such as 1-digit addition still repeat problems).
    """
    _check(kind, difficulty)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{kind}:{difficulty}:{split}:{seed}")
    name = f"arith-{kind}-{difficulty}"
    problems = []
    for i in range(n):
        question, answer, solution = GENERATORS[kind](rng, difficulty)
        meta = dict(
            source=name,
            index=i,
            task=kind,
            difficulty=difficulty,
            solution=boxed_solution(solution, answer),
        )
        problems.append(Problem(f"{name}-{split}-{seed}-{i}", question, str(answer), meta))
    return problems


def parse_task_name(name: str) -> tuple[str, int] | None:
    """``"arith-add-2"`` -> ``("add", 2)``; None for names that are not synthetic tasks."""
    m = TASK_NAME.fullmatch(name)
    return (m["kind"], int(m["difficulty"])) if m else None


# Two worked examples for the real datasets, in the same "... The answer is \boxed{}." style.
_GSM8K_SHOTS = [
    (
        "A baker makes 24 muffins and sells 15 of them. He then bakes 8 more. "
        "How many muffins does he have now?",
        "He has 24 - 15 = 9 muffins left, then 9 + 8 = 17. The answer is \\boxed{17}.",
    ),
    (
        "Tickets cost $4 each. Maria buys 6 tickets and pays with a $50 bill. "
        "How much change does she get?",
        "6 tickets cost 6 * 4 = 24 dollars, so her change is 50 - 24 = 26 dollars. "
        "The answer is \\boxed{26}.",
    ),
]
_MATH_SHOTS = [
    (
        "What is the sum of all positive divisors of 12?",
        "The divisors of 12 are 1, 2, 3, 4, 6 and 12, and their sum is 28. "
        "The answer is \\boxed{28}.",
    ),
    (
        "Simplify $\\frac{18}{24}$.",
        "Dividing numerator and denominator by 6 gives $\\frac{3}{4}$. "
        "The answer is \\boxed{\\frac{3}{4}}.",
    ),
]


def few_shot_examples(task: str) -> list[tuple[str, str]]:
    """Two (question, answer ending in ``\\boxed{}``) pairs in the style of `task`.

    `task` is a synthetic kind (``"add"``), a synthetic task name (``"arith-add-2"``: examples
    at that difficulty), a GSM8K preset name, or anything else (MATH-style examples).
    The synthetic examples come from a seed no `synthetic_task` call uses.
    """
    parsed = parse_task_name(task)
    kind, difficulty = parsed if parsed else (task, 1)
    if parsed or kind in GENERATORS:
        _check(kind, difficulty)
        rng = random.Random(f"few-shot:{kind}:{difficulty}")
        shots = [GENERATORS[kind](rng, difficulty) for _ in range(2)]
        return [(q, boxed_solution(s, a)) for q, a, s in shots]
    return list(_GSM8K_SHOTS if task.startswith("gsm8k") else _MATH_SHOTS)
