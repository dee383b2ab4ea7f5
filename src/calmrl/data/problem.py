"""The `Problem` record, and turning raw dataset rows into problems."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from calmrl.rewards.extract import normalize_gold

# Tried in order when the caller names no field. `gt_answer` first: veRL-style files keep the
# bare answer there; `solution` last, for MATH-style rows with a worked solution only.
QUESTION_FIELDS = ("question", "problem", "query", "input", "prompt")
ANSWER_FIELDS = ("gt_answer", "answer", "final_answer", "target", "solution")
# OlympiadBench keeps the unit of a physics answer apart (``final_answer: ["$30$"]``,
# ``unit: "m/s"``); it joins the gold so that a response may give the unit or leave it out.
UNIT_FIELD = "unit"


@dataclass
class Problem:
    """One task: `answer` is the normalised gold string that the verifier compares against."""

    id: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


class DataFormatError(ValueError):
    """A dataset row that cannot become a Problem; the message names the file and line."""


def _pick_field(row: Mapping[str, Any], explicit: str | None, candidates: tuple[str, ...]) -> str:
    if explicit is not None:
        if explicit not in row:
            raise KeyError(f"no field {explicit!r} (fields: {sorted(row)})")
        return explicit
    for name in candidates:
        if name in row:
            return name
    raise KeyError(f"none of the fields {list(candidates)} (fields: {sorted(row)})")


def row_to_problem(
    row: Mapping[str, Any],
    *,
    name: str,
    index: int,
    question_field: str | None = None,
    answer_field: str | None = None,
    require_answer: bool = True,
) -> Problem | None:
    """Map one row to a Problem, every other field going to `meta`; None if the gold is empty.

    The gold may be a list of answers (all required) and comes with the row's ``unit``, if any
    (see `normalize_gold`).

    With ``require_answer=False`` (prompts to sample, nothing to grade) a row without a gold
    field becomes a Problem with an empty answer. Raises KeyError or TypeError for rows that
    do not fit.
    """
    if not isinstance(row, Mapping):
        raise TypeError(f"expected an object, got {type(row).__name__}")
    q_field = _pick_field(row, question_field, QUESTION_FIELDS)
    question = row[q_field]
    if not isinstance(question, str) or not question.strip():
        raise TypeError(f"field {q_field!r} is not a non-empty string")
    if not require_answer and not any(f in row for f in (answer_field, *ANSWER_FIELDS) if f):
        meta = {k: v for k, v in row.items() if k != q_field}
        return Problem(id=f"{name}-{index}", question=question, answer="", meta=meta)
    a_field = _pick_field(row, answer_field, ANSWER_FIELDS)
    raw_answer = row[a_field]
    unit = row.get(UNIT_FIELD)
    answer = normalize_gold(raw_answer, unit=unit if isinstance(unit, str) else None)
    if not answer:
        return None
    meta = {k: v for k, v in row.items() if k not in (q_field, a_field)}
    meta.update(source=name, index=index)
    if answer != str(raw_answer):
        meta["raw_answer"] = raw_answer  # e.g. GSM8K's worked solution
    raw_id = row.get("id", row.get("unique_id"))
    pid = f"{name}-{raw_id}" if raw_id is not None else f"{name}-{index}"
    return Problem(id=pid, question=question, answer=answer, meta=meta)


def rows_to_problems(
    rows: Iterable[tuple[str, Any]],
    *,
    name: str,
    limit: int | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    require_answer: bool = True,
) -> list[Problem]:
    """Convert ``(location, row)`` pairs, stopping after `limit` problems.

    `location` (e.g. ``"data.jsonl, line 7"``) prefixes the message of any error. Rows with
    an empty gold cannot be verified: they are skipped with a warning (public sets have a few).
    """
    problems: list[Problem] = []
    skipped: list[str] = []
    if limit == 0:
        return problems
    for index, (location, row) in enumerate(rows):
        try:
            problem = row_to_problem(
                row,
                name=name,
                index=index,
                question_field=question_field,
                answer_field=answer_field,
                require_answer=require_answer,
            )
        except (KeyError, TypeError) as e:
            message = e.args[0] if isinstance(e, KeyError) else str(e)
            raise DataFormatError(f"{location}: {message}") from e
        if problem is None:
            skipped.append(location)
            continue
        problems.append(problem)
        if len(problems) == limit:
            break
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} rows with an empty gold answer: {'; '.join(skipped[:5])}"
            + (" ..." if len(skipped) > 5 else ""),
            stacklevel=2,
        )
    return problems
