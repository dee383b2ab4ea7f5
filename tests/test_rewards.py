"""Rewards: answer extraction, gold normalisation, Math-Verify under a deadline, the registry."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from calmrl.rewards import (
    MathVerifier,
    PerItemReward,
    answers_equivalent,
    extract_boxed,
    extract_last_number,
    get_reward,
    is_safe_answer,
    math_reward,
    normalize_gold,
    register_reward,
)


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(timeout_s=2.0, num_workers=2) as v:
        yield v


def boxed(answer: str) -> str:
    return f"Let me think. So the final answer is $\\boxed{{{answer}}}$."


# (response, gold, expected reward)
TABLE = [
    # equivalent forms
    (boxed("0.5"), "\\frac{1}{2}", 1.0),
    (boxed("\\frac{1}{2}"), "0.5", 1.0),
    (boxed("\\dfrac{1}{2}"), "\\frac{1}{2}", 1.0),
    (boxed("\\tfrac12"), "0.5", 1.0),
    (boxed("1/3"), "\\frac{1}{3}", 1.0),
    (boxed("1,000"), "1000", 1.0),
    (boxed("1000"), "Worked solution.\n#### 1,000", 1.0),
    (boxed("x=3"), "3", 1.0),
    (boxed("3"), "x=3", 1.0),
    (boxed("90^\\circ"), "90", 1.0),
    (boxed("90"), "90^\\circ", 1.0),
    (boxed("50\\%"), "50", 1.0),
    (boxed("50"), "50\\%", 1.0),
    (boxed("[1,2)"), "[1,2)", 1.0),
    (boxed("(-\\infty, 3]"), "(-\\infty,3]", 1.0),
    (boxed("x \\in [2, 5]"), "[2,5]", 1.0),
    (boxed("\\{2,1\\}"), "\\{1,2\\}", 1.0),
    (boxed("3, 5, 7"), "3,5,7", 1.0),
    (boxed("(3, \\pi/2)"), "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
    (boxed("2\\sqrt{2}"), "\\sqrt{8}", 1.0),
    (boxed("-5i+6"), "6 - 5i", 1.0),
    (boxed("x^2+2x+1"), "(x+1)^2", 1.0),
    (boxed("\\frac{\\cos x}{\\sin x}"), "\\cot x", 1.0),
    (boxed("Evelyn"), "\\text{Evelyn}", 1.0),
    (boxed("25"), "025", 1.0),  # AIME gold
    (boxed("27"), 27.0, 1.0),  # AMC gold (a float in the file)
    (boxed("27.0"), "27", 1.0),
    (boxed("\\$5"), "\\$ 5", 1.0),
    (boxed("10^{3}"), "1000", 1.0),
    (boxed("0.3333333"), "\\frac13", 1.0),
    (boxed("\\begin{pmatrix}1\\\\2\\end{pmatrix}"), "\\begin{pmatrix}1\\\\2\\end{pmatrix}", 1.0),
    ("First \\boxed{3}, then corrected: \\boxed{4}", "4", 1.0),
    ("\\fbox{12}", "12", 1.0),
    # wrong answers
    ("First \\boxed{4}, then corrected: \\boxed{3}", "4", 0.0),
    (boxed("4"), "5", 0.0),
    (boxed("-3"), "3", 0.0),
    (boxed("\\frac{1}{3}"), "\\frac{1}{2}", 0.0),
    (boxed("[1,2]"), "[1,2)", 0.0),
    (boxed("x=4"), "3", 0.0),
    (boxed("3.14"), "\\pi", 0.0),
    (boxed("0.333"), "\\frac13", 0.0),
    (boxed("42_8"), "52_8", 0.0),
    # no usable answer
    ("The answer is 42", "42", 0.0),  # no box (Math-Verify alone would take the 42)
    ("\\boxed{}", "0", 0.0),
    ("The answer is \\boxed{4", "4", 0.0),  # truncated
    # malformed LaTeX
    (boxed("\\frac{1}{}"), "1", 0.0),
    (boxed("\\sqrt[}{}"), "2", 0.0),
    (boxed("$$"), "1", 0.0),
    (boxed("\\left( 1, 2"), "(1,2)", 0.0),
]


def test_table_has_enough_cases():
    assert len(TABLE) >= 40


def test_verifier_table(verifier):
    got = verifier([r for r, _, _ in TABLE], [g for _, g, _ in TABLE])
    wrong = [(r, g, e, x) for (r, g, e), x in zip(TABLE, got, strict=True) if x != e]
    assert not wrong, wrong


# Inputs that make sympy hang, eat memory or overflow the parser if verified naively.
ADVERSARIAL = [
    "\\boxed{9^9^9^9^9}",
    "\\boxed{9^{9^{9^{9^{9}}}}}",
    "\\boxed{10^{10^{10}}}",
    "\\boxed{99999999999^{99999999}}",
    "\\boxed{(10^{8})!}",  # passes the pre-checks: only the deadline stops it
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}",
    "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "\\boxed{" + "1+" * 500_000 + "1}",
    "\\boxed{" + "9" * 1_000_000 + "}",
    "x" * 1_000_000 + "\\boxed{" + "{" * 100_000,
    "\\boxed{\\frac{\\sqrt[}{}}}{\\left(}",
    "\\boxed{\\begin{pmatrix}\\end{array}}",
]


def test_adversarial_inputs_score_zero_within_bound():
    with MathVerifier(timeout_s=1.0, num_workers=2) as v:
        start = time.monotonic()
        rewards = v(ADVERSARIAL, ["5"] * len(ADVERSARIAL))
        elapsed = time.monotonic() - start
        assert rewards == [0.0] * len(ADVERSARIAL)
        assert elapsed < 30.0
        # The pool survives killed workers.
        assert v([boxed("\\frac{2}{4}")] * 4, ["0.5"] * 4) == [1.0] * 4


def test_deadline_kills_stuck_worker():
    with MathVerifier(timeout_s=0.5, num_workers=1) as v:
        assert is_safe_answer("(10^{8})!")  # so this reaches a worker and gets stuck there
        start = time.monotonic()
        assert v(["\\boxed{(10^{8})!}", boxed("\\frac{1}{2}")], ["5", "0.5"]) == [0.0, 1.0]
        assert time.monotonic() - start < 30.0


def test_dead_idle_worker_is_replaced():
    with MathVerifier(num_workers=1) as v:
        assert v([boxed("0.5")], ["1/2"]) == [1.0]
        for worker in v._pool._idle:  # e.g. killed by the OOM killer between batches
            worker.proc.kill()
            worker.proc.wait()
        assert v([boxed("0.5"), boxed("2")], ["1/2", "3"]) == [1.0, 0.0]


@pytest.mark.parametrize(
    "answer",
    ["9^9^9", "2^{3^{4}}", "10 ** 10 ** 10", "2^{1000000}", "123456!", "x" * 2000, "(" * 30],
)
def test_precheck_rejects_dangerous(answer):
    assert not is_safe_answer(answer)


@pytest.mark.parametrize("answer", ["2^{10}", "e^{x^2}", "10!", "\\frac{1}{2}", "(1, 2)", "x^2+1"])
def test_precheck_accepts_ordinary(answer):
    assert is_safe_answer(answer)


def test_thread_safety(verifier):
    cases = [(boxed("\\frac{1}{2}"), "0.5", 1.0), (boxed("0.25"), "\\frac14", 1.0)] * 20
    cases += [(boxed("\\sqrt{2}"), "2", 0.0)] * 20
    results: dict[int, list[float]] = {}

    def work(i: int) -> None:
        results[i] = verifier([r for r, _, _ in cases], [g for _, g, _ in cases])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    expected = [e for _, _, e in cases]
    assert sorted(results) == [0, 1, 2, 3]
    assert all(r == expected for r in results.values())


def test_in_process_mode_works_off_the_main_thread():
    # Math-Verify's own timeout would raise here (signal.alarm outside the main thread).
    v = MathVerifier(num_workers=0)
    out: list[float] = []
    t = threading.Thread(target=lambda: out.extend(v([boxed("0.5"), boxed("2")], ["1/2", "3"])))
    t.start()
    t.join(timeout=60)
    assert out == [1.0, 0.0]


def _verify_in_child(queue) -> None:
    from calmrl.rewards import math_reward

    queue.put(math_reward(boxed("\\frac{3}{4}"), "0.75"))


def test_forked_child_gets_its_own_workers():
    assert math_reward(boxed("\\frac{3}{4}"), "0.75") == 1.0  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_verify_in_child, args=(queue,))
    child.start()
    result = queue.get(timeout=120)
    child.join(timeout=30)
    assert result == 1.0
    assert math_reward(boxed("\\frac{3}{4}"), "0.75") == 1.0  # and the parent's still work


def test_math_reward_defaults():
    assert math_reward(boxed("\\frac{6}{8}"), "0.75") == 1.0
    assert math_reward(boxed("0.7"), "0.75") == 0.0
    assert math_reward("0.75", "0.75") == 0.0  # no box


def test_reward_values_and_format_reward():
    v = MathVerifier(correct=1.0, incorrect=-1.0, format_bonus=0.1, format_penalty=0.5)
    responses = [boxed("4"), boxed("5"), "it is 4"]
    assert v(responses, ["4"] * 3) == [1.1, -0.9, -1.5]


def test_number_fallback():
    v = MathVerifier(number_fallback=True)
    assert v.extract("so 3 + 4 = 7") == "7"
    assert v.extract("3 + 4 = \\boxed{7}, not 8") == "7"  # a box still wins
    assert v(["so 3 + 4 = 7", "we get 1,250 apples", "no number"], ["7", "1250", "1"]) == [
        1.0,
        1.0,
        0.0,
    ]


def test_length_mismatch_raises(verifier):
    with pytest.raises(ValueError, match="2 responses but 1 golds"):
        verifier(["a", "b"], ["1"])


def test_answers_equivalent_and_group(verifier):
    assert answers_equivalent("\\frac{1}{2}", "0.5")
    assert answers_equivalent("x=3", "3")
    assert not answers_equivalent("1", "2")
    labels = verifier.group(["1/2", "0.5", "3", None, "\\frac{1}{2}", "3", "x = 3", "4"])
    assert labels == [0, 0, 1, -1, 0, 1, 1, 2]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("a \\boxed{1} b \\boxed{ {2}+{3} } c", "{2}+{3}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed 5 apples", "5"),
        ("$\\boxed{x}$ and \\fbox{y}", "y"),
        ("no box", None),
        ("\\boxed{}", None),
        ("\\boxed{1} \\boxed{2", None),  # the last box is unfinished
        ("\\boxedfoo{1}", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_is_linear_on_huge_input():
    text = "{" * 1_000_000 + "\\boxed{" + "{" * 1_000_000
    start = time.monotonic()
    assert extract_boxed(text) is None
    assert extract_boxed(text + "}" * 1_000_001) == "{" * 1_000_000 + "}" * 1_000_000
    assert time.monotonic() - start < 10.0


@pytest.mark.parametrize(
    "text, expected",
    [("3 + 4 = 7.", "7"), ("-2.5 or 1,250", "1250"), ("about 3/4", "3/4"), ("none", None)],
)
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("#### 1,450,000", "1450000"),
        ("#### -10", "-10"),
        ("025", "25"),
        (27.0, "27"),
        (0.15, "0.15"),
        (7, "7"),
        ("So the answer is $\\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}"),
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("1,-2", "1,-2"),  # a list, not a thousands separator
    ],
)
def test_normalize_gold(raw, expected):
    assert normalize_gold(raw) == expected
    assert normalize_gold(normalize_gold(raw)) == expected


def test_normalize_gold_rejects_non_answers():
    with pytest.raises(TypeError, match="gold answer"):
        normalize_gold(None)


def test_registry_builtin_and_import_paths():
    math = get_reward("math", correct=1.0, incorrect=-1.0, num_workers=0)
    assert isinstance(math, MathVerifier)
    assert math([boxed("2")], ["2"]) == [1.0]
    cls = get_reward("calmrl.rewards.verifier:MathVerifier", incorrect=-1.0, num_workers=0)
    assert cls([boxed("3")], ["2"]) == [-1.0]
    per_item = get_reward("operator:eq")  # a plain function scores one item
    assert isinstance(per_item, PerItemReward)
    assert per_item(["a", "b"], ["a", "c"]) == [1.0, 0.0]


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        get_reward("nope")
    with pytest.raises(ValueError, match="cannot import reward"):
        get_reward("calmrl.no_such_module:fn")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("math", MathVerifier)
