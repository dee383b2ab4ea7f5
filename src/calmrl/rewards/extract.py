"""Answer extraction and gold normalisation: pure string functions, no Math-Verify.

Model answers come from the last ``\\boxed{...}`` of a response (optionally the last number in
the text, for weak models that rarely box); for a gold with several answers, also from the
final boxes, one per answer. Gold answers come from each dataset's own format (GSM8K's
``#### N``, MATH's ``answer`` or the last box of a ``solution``, AIME's ``"025"``, AMC's
``27.0``, OlympiadBench's ``final_answer`` list and ``unit``) and are normalised to one string
form. Numbers in scientific notation are recognised here, because Math-Verify reads the ``e``
of ``4.5e33`` as Euler's number.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import NamedTuple

# Commands whose braced argument is a final answer. `\fbox` appears in some MATH solutions.
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_INTEGER = re.compile(r"[-+]?\d+")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+")
_INTEGRAL_FLOAT = re.compile(r"([-+]?\d+)\.0+")
_DOLLAR = re.compile(r"(?<!\\)\$")  # math delimiters, not the escaped currency sign `\$`


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in `text`.

    Returns None when there is no box, when the last box is empty, or when it is never closed
    (a truncated generation has no final answer yet, even if an earlier box exists).
    Also accepts the brace-less form ``\\boxed 5``. Runs in linear time on any input.
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    i = start + len("\\boxed" if text.startswith("\\boxed", start) else "\\fbox")
    if i < len(text) and text[i].isalpha():  # e.g. `\boxedfoo` is another command
        return None
    rest = text[i:].lstrip()
    if not rest.startswith("{"):
        # `\boxed 5`: the answer runs to the next space or math delimiter.
        answer = re.match(r"[^\s$]*", rest).group(0)
        return answer or None
    depth = 0
    for j, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                answer = rest[1:j].strip()
                return answer or None
    return None


class Box(NamedTuple):
    start: int  # index of the command
    end: int  # index just after the box
    content: str


_BOX_TOKEN = re.compile(
    r"(?P<open>\\(?:boxed|fbox)\s*\{)|(?P<bare>\\(?:boxed|fbox)(?![A-Za-z]))|(?P<left>\{)|\}"
)
_BARE_ANSWER = re.compile(r"\s*([^\s${}]*)")
# Separators of an answer list: boxes a short phrase apart that holds one are a single answer.
_LIST_SEPARATOR = re.compile(r"[,;]|(?<![A-Za-z])(?:and|or)(?![A-Za-z])")
_OR = re.compile(r"(?<![A-Za-z])or(?![A-Za-z])")


def extract_boxes(text: str) -> list[Box]:
    """Every outermost box of `text`, in order; [] when the last box is never closed.

    One pass over the braces, so linear time on any input. Brace-less ``\\boxed 5`` counts.
    """
    boxes: list[Box] = []
    depth = 0
    opened: tuple[int, int, int] | None = None  # (command start, content start, depth outside)
    for m in _BOX_TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "open":
            if opened is None:
                opened = (m.start(), m.end(), depth)
            depth += 1
        elif kind == "bare":
            if opened is None:
                bare = _BARE_ANSWER.match(text, m.end())
                boxes.append(Box(m.start(), bare.end(), bare.group(1)))
        elif kind == "left":
            depth += 1
        else:
            depth -= 1
            if opened is not None and depth == opened[2]:
                boxes.append(Box(opened[0], m.end(), text[opened[1] : m.start()].strip()))
                opened = None
    return [] if opened is not None else boxes


def _one_list(gap: str, or_joins: bool) -> bool:
    # The rule of thumb of latex2sympy2_extended's `extract_boxed_content` (used by
    # Math-Verify): boxes under 10 characters apart, or under 70 apart with a separator between
    # them, belong to one answer list; farther apart, the earlier box is an abandoned attempt.
    if not or_joins and _OR.search(gap):
        return False
    return len(gap) < 10 or (len(gap) < 70 and _LIST_SEPARATOR.search(gap) is not None)


def final_box_run(text: str, boxes: list[Box] | None = None, or_joins: bool = True) -> list[Box]:
    """The last box of `text` with the boxes before it that are part of the same answer list.

    ``or_joins=False`` for reference solutions, where boxes joined by "or" are one answer in
    two forms (MATH: ``\\boxed{15\\frac{39}{40}}, or \\boxed{\\frac{639}{40}}``), not a list.
    """
    boxes = extract_boxes(text) if boxes is None else boxes
    first = len(boxes) - 1
    while first > 0 and _one_list(text[boxes[first - 1].end : boxes[first].start], or_joins):
        first -= 1
    return boxes[max(first, 0) :]


def extract_final_answers(text: str, n_answers: int) -> list[str]:
    """The contents of the boxes that give the final answers to a question with `n_answers`.

    That is the final answer list (``\\boxed{1} and \\boxed{2}``), extended back to
    `n_answers` boxes when it is shorter (``(a) ... \\boxed{1}. (b) ... \\boxed{2}``), but
    never cut: a list of three boxes for two answers is read whole, and then fails. Repeats
    of the previous box count once. [] when there is no complete final box.
    """
    boxes = extract_boxes(text)
    run = final_box_run(text, boxes)
    chosen = boxes[-max(len(run), min(n_answers, len(boxes))) :] if run else []
    answers: list[str] = []
    for box in chosen:
        if box.content and (not answers or answers[-1] != box.content):
            answers.append(box.content)
    return answers


def extract_last_number(text: str) -> str | None:
    """The last number in `text` (integer, decimal, ``1,000`` or ``3/4``), commas removed."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def as_integer(answer: str) -> int | None:
    """`answer` as an int if it is a plain integer: ``42``, ``-7``, ``025``, ``1,000``, ``27.0``."""
    s = answer.strip().strip("$").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    elif m := _INTEGRAL_FLOAT.fullmatch(s):
        s = m.group(1)
    if not _INTEGER.fullmatch(s) or len(s) > 1000:  # int() refuses > 4300 digits anyway
        return None
    return int(s)


_MANTISSA = r"(?:\d+(?:\.\d*)?|\.\d+)"
_E_NOTATION = re.compile(rf"(?<![\w.])({_MANTISSA})[eE]([-+]?)(\d+)(?![\d.])")
_POWER = r"10\s*\^\s*(?:\{\s*([-+]?\d+)\s*\}|(\d))"  # 10^{-7}, 10^3 (LaTeX's 10^33 is 10^3 3)
_NUMBER_FORM = re.compile(
    rf"([-+]?)\s*(?:({_MANTISSA})(?:[eE]([-+]?)(\d+)|\s*(?:\\times|\\cdot|×|\*)\s*{_POWER})?"
    rf"|{_POWER})"
)
# Longer numbers and exponents are left to the worker, behind the pre-checks: Decimal
# arithmetic on them overflows.
_MAX_NUMBER_CHARS = 200
_MAX_EXPONENT_DIGITS = 4


def _is_scientific(mantissa: str, sign: str, exponent: str) -> bool:
    """Whether ``<mantissa>e<sign><exponent>`` is scientific notation rather than Euler's e.

    ``2e-1`` can mean 2e - 1; a decimal point (``4.5e-3``), a unit mantissa (``1e-7``), an
    unsigned (``2e3``) or multi-digit (``3e-10``) exponent are read as powers of ten.
    """
    return "." in mantissa or not sign or mantissa == "1" or len(exponent) > 1


def scientific_to_latex(text: str) -> str:
    """Rewrite ``4.5e33`` as ``(4.5 \\times 10^{33})`` so that Math-Verify reads a power of ten.

    ``e`` in genuine expressions (``e^{2}``, ``2e``, ``3e-1`` read as 3e - 1) is kept.
    """
    if "e" not in text and "E" not in text:
        return text

    def rewrite(m: re.Match[str]) -> str:
        mantissa, sign, exponent = m.groups()
        if not _is_scientific(mantissa, sign, exponent):
            return m.group(0)
        return f"({mantissa} \\times 10^{{{'-' if sign == '-' else ''}{exponent}}})"

    return _E_NOTATION.sub(rewrite, text)


def as_number(answer: str) -> tuple[Decimal, bool] | None:
    """`answer` as ``(value, in_scientific_notation)`` if it is a plain number, else None.

    Plain numbers: ``42``, ``-0.5``, ``4.5e33``, ``1.2 \\times 10^{-7}``, ``3 \\cdot 10^{8}``,
    ``10^{3}``. ``2e-1`` is not one (see `_is_scientific`).
    """
    s = answer.strip().strip("$").strip()
    m = _NUMBER_FORM.fullmatch(s) if len(s) <= _MAX_NUMBER_CHARS else None
    if m is None:
        return None
    sign, mantissa, e_sign, e_digits, times_braced, times_digit, power_braced, power_digit = (
        m.groups()
    )
    if e_digits is not None:
        if not _is_scientific(mantissa, e_sign, e_digits):
            return None
        exponent = f"{e_sign}{e_digits}"
    else:
        exponent = times_braced or times_digit or power_braced or power_digit
    scientific = exponent is not None
    if scientific and len(exponent.lstrip("+-")) > _MAX_EXPONENT_DIGITS:
        return None
    value = Decimal(f"{sign}{mantissa or '1'}E{exponent or 0}")  # exact: no context rounding
    return value, scientific


def _top_level_spans(text: str) -> list[tuple[int, int]]:
    """Spans of the parts of `text` between commas and semicolons outside any bracket
    (LaTeX's spaces ``\\,`` and ``\\;`` separate nothing)."""
    spans, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch in ",;" and depth == 0 and text[i - 1 : i] != "\\":
            spans.append((start, i))
            start = i + 1
    spans.append((start, len(text)))
    return spans


_AND_OR = re.compile(r"\\text\s*\{\s*,?\s*(?:and|or)\s*\}|(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])")
# One number with thousands separators, MATH's ``10,\\!080`` or ``\\$115,000``, is one answer.
_GROUPED_NUMBER = re.compile(r"[-+]?(?:\\\$)?\d{1,3}(?:,(?:\s*\\!\s*)?\d{3})+(?:\.\d+)?")


def _set_contents(text: str) -> str:
    """The elements of `text` if it is one set, ``\\{1, 2\\}`` or ``{1, 2}``; else `text`."""
    s = text.strip()
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2]
    elif s.startswith("{") and s.endswith("}"):
        inner = s[1:-1]
    else:
        return text
    depth = 0
    for ch in inner:  # the outer braces must enclose everything: not `{1}, {2}`
        depth += ch == "{"
        depth -= ch == "}"
        if depth < 0:
            return text
    return inner


def split_answers(gold: str) -> list[str]:
    """The answers `gold` lists: ``"3"`` -> ``["3"]``, ``"-2, 1"`` -> ``["-2", "1"]``,
    ``"(1, 2), (2, 1)"`` -> two pairs, ``"\\{1, 2, 3\\}"`` -> three, ``"10,\\!080"`` -> one."""
    if _GROUPED_NUMBER.fullmatch(gold.strip()):
        return [gold.strip()]
    separated = _AND_OR.sub(",", _set_contents(gold))
    answers = [separated[a:b].strip() for a, b in _top_level_spans(separated)]
    return [a for a in answers if a] or [gold.strip()]


def count_answers(gold: str) -> int:
    """How many answers `gold` lists (see `split_answers`)."""
    return len(split_answers(gold))


# A unit that `normalize_gold` attached to a gold answer: ``30\text{ m/s}``.
_UNIT_MARK = re.compile(r"(\S)\s*\\text\{ ([^{}\s][^{}]*)\}\s*$")
_UNIT_WRAPPER = r"\\(?:mathrm|text|textnormal|textrm|mbox|rm|operatorname)\s*\{"
_UNIT_SPACE = r"(?:\s|~|\\[,;:! ])"


def _plain_unit(unit: str) -> str:
    """`unit` without math delimiters, font commands, braces and LaTeX spacing."""
    s = re.sub(
        r"\\(?:mathrm|text|textnormal|textrm|mbox|rm|operatorname)", "", _DOLLAR.sub("", unit)
    )
    return " ".join(re.sub(rf"{_UNIT_SPACE}|[{{}}]", " ", s).split())


def attach_unit(gold: str, unit: str) -> str:
    """`gold` with `unit` after each of its answers, in the form `split_units` recognises."""
    plain = _plain_unit(unit)
    if not plain or not gold:
        return gold
    parts = [gold[a:b].strip() for a, b in _top_level_spans(gold)]
    return ", ".join(
        p if (m := _UNIT_MARK.search(p)) and m.group(2) == plain else f"{p}\\text{{ {plain}}}"
        for p in parts
        if p
    )


def split_units(gold: str) -> tuple[str, tuple[str, ...]]:
    """``(gold without its units, the units)`` for a gold whose answers end in ``\\text{ unit}``.

    Covers the units `attach_unit` adds and MATH's ``125\\text{ miles}``.
    """
    if "\\text{ " not in gold:
        return gold, ()
    parts, units = [], []
    for a, b in _top_level_spans(gold):
        part = gold[a:b].strip()
        if m := _UNIT_MARK.search(part):
            part = part[: m.start()] + m.group(1)
            units.append(m.group(2))
        parts.append(part)
    if not units:
        return gold, ()
    return ", ".join(parts), tuple(dict.fromkeys(units))


@functools.lru_cache(maxsize=256)
def _unit_pattern(unit: str) -> re.Pattern[str]:
    # The unit's characters in order, with any font commands, braces or spacing between them,
    # at the end of an answer and not glued to a preceding letter (`cm` does not end in `m`).
    glue = rf"(?:{_UNIT_SPACE}|{_UNIT_WRAPPER}|[{{}}])*"
    chars = glue.join(re.escape(c) for c in unit if not c.isspace())
    lead = "" if not unit[0].isalpha() else r"(?<![A-Za-z])"
    return re.compile(rf"{_UNIT_SPACE}*(?:{_UNIT_WRAPPER})?{lead}{_UNIT_SPACE}*{chars}[\s}}]*$")


def strip_units(answer: str, units: Iterable[str]) -> str:
    """`answer` with any of `units` removed from the end of each of its answers.

    ``30 m/s``, ``30\\,\\mathrm{m/s}`` and ``30`` all become ``30`` for the unit ``m/s``; an
    answer that is only a unit is left alone.
    """
    units = tuple(units)
    out, last = [], 0
    for a, b in _top_level_spans(answer):
        part = answer[a:b]
        for unit in units:
            m = _unit_pattern(unit).search(part)
            if m and part[: m.start()].strip():
                part = part[: m.start()].rstrip()
                break
        out.append(answer[last:a] + part)
        last = b
    return "".join(out)


def _normalize_one(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(
            f"gold answer must be a str, int or float (or a list of them), got "
            f"{type(value).__name__}"
        )
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    s = str(value).strip()
    if "####" in s:
        s = s.rsplit("####", 1)[1].strip().replace(",", "")
    elif any(cmd in s for cmd in _BOX_COMMANDS) and (run := final_box_run(s, or_joins=False)):
        s = ", ".join(dict.fromkeys(box.content for box in run if box.content)) or s
    s = _DOLLAR.sub("", s).strip()
    n = as_integer(s) if _INTEGER.fullmatch(s) or _INTEGRAL_FLOAT.fullmatch(s) else None
    return str(n) if n is not None else s


def normalize_gold(value: object, unit: str | None = None) -> str:
    """Normalise a dataset's gold answer to a string Math-Verify can parse.

    - numbers: ``27.0`` -> ``"27"``, ``0.15`` -> ``"0.15"``
    - GSM8K worked solutions: the text after the last ``####``, thousands commas removed
    - MATH solutions: the content of the last box, or of the final list of boxes
      (``\\boxed{1} and \\boxed{-2}`` -> ``"1, -2"``)
    - plain integers lose leading zeros (AIME's ``"025"`` -> ``"25"``)
    - math delimiters go: ``$\\frac{1}{2}$`` -> ``"\\frac{1}{2}"``
    - lists (OlympiadBench's ``final_answer``): each item normalised, joined with ``", "``: a
      gold with several answers, every one of which a response must give
    - `unit` (OlympiadBench's ``unit`` field) follows each answer as ``\\text{ unit}``, which
      the verifier accepts in a response with or without the unit
    Idempotent: normalising a normalised gold returns it unchanged.
    """
    if isinstance(value, (list, tuple)):
        s = ", ".join(p for p in map(_normalize_one, value) if p)
    else:
        s = _normalize_one(value)
    return attach_unit(s, unit) if unit else s
