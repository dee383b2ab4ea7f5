"""Answer extraction and gold normalisation: pure string functions, no Math-Verify.

Model answers come from the last ``\\boxed{...}`` of a response (optionally the last number in
the text, for weak models that rarely box). Gold answers come from each dataset's own format
(GSM8K's ``#### N``, MATH's ``answer`` or the last box of a ``solution``, AIME's ``"025"``, AMC's
``27.0``) and are normalised to one string form.
"""

from __future__ import annotations

import re

# Commands whose braced argument is a final answer. `\fbox` appears in some MATH solutions.
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_INTEGER = re.compile(r"[-+]?\d+")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+")
_INTEGRAL_FLOAT = re.compile(r"([-+]?\d+)\.0+")


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


def normalize_gold(value: object) -> str:
    """Normalise a dataset's gold answer to a string Math-Verify can parse.

    - numbers: ``27.0`` -> ``"27"``, ``0.15`` -> ``"0.15"``
    - GSM8K worked solutions: the text after the last ``####``, thousands commas removed
    - MATH solutions: the content of the last box
    - plain integers lose leading zeros (AIME's ``"025"`` -> ``"25"``)
    Idempotent: normalising a normalised gold returns it unchanged.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"gold answer must be a str, int or float, got {type(value).__name__}")
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    s = str(value).strip()
    if "####" in s:
        s = s.rsplit("####", 1)[1].strip().replace(",", "")
    elif any(cmd in s for cmd in _BOX_COMMANDS):
        s = extract_boxed(s) or s
    if len(s) > 1 and s.startswith("$") and s.endswith("$"):
        s = s.strip("$").strip()
    n = as_integer(s) if _INTEGER.fullmatch(s) or _INTEGRAL_FLOAT.fullmatch(s) else None
    return str(n) if n is not None else s
