"""Math-Verify calls, and the worker process that runs them for the pool in `_pool.py`.

Protocol (one JSON request per line on stdin, one reply per line on stdout): the worker first
prints ``ready`` once its imports are warm, then answers each ``[op, a, b]`` with ``1`` or ``0``.
`op` (see `make_op`) names the comparison and carries the verifier's Math-Verify options.
It exits at end of input or when its parent disappears.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
import time
from typing import Any

# Address-space cap per worker: a runaway sympy computation (huge powers, factorials) then
# raises MemoryError inside Math-Verify, which returns False, instead of eating the machine.
WORKER_MEMORY_BYTES = 4 << 30


def make_op(mode: str, **options: Any) -> str:
    """A request's `op`: ``mode`` ("verify" or "equiv") with keyword options for
    `math_verify.verify` (``float_rounding``, ``numeric_precision``, ``strict``, ...)."""
    return json.dumps({"mode": mode, **options}, sort_keys=True)


@functools.lru_cache(maxsize=64)
def _read_op(op: str) -> tuple[str, dict[str, Any]]:
    options = json.loads(op)
    return options.pop("mode"), options


@functools.lru_cache(maxsize=1)
def _latex_config() -> Any:
    from math_verify import LatexExtractionConfig

    return LatexExtractionConfig(boxed_match_priority=0)


@functools.lru_cache(maxsize=8192)
def _parse(answer: str) -> list:
    """Parse one answer string; cached because golds repeat across the n samples of a problem."""
    from math_verify import parse

    # Wrapping in a box makes Math-Verify read exactly this string (and nothing around it).
    # extraction_mode="first_match" parses the box as a whole or not at all: with the default
    # "any_match", a box that fails to parse falls back to whatever fragment another pattern
    # finds (``\frac{1}{3}E_1+\frac{2}{3}E_2`` became 2/3). What does not parse is compared
    # as a string. parsing_timeout=None: its signal.alarm timeout breaks outside the main
    # thread; the caller bounds time instead.
    return parse(
        "\\boxed{" + answer + "}",
        extraction_config=(_latex_config(),),
        extraction_mode="first_match",
        parsing_timeout=None,
    )


def check(op: str, a: str, b: str) -> bool:
    """``verify``: is answer `b` correct for gold `a`? ``equiv``: are `a` and `b` equivalent?

    Math-Verify's `verify(gold, pred)` is not symmetric (e.g. ``x=3`` as gold accepts ``3``);
    equivalence accepts either direction. Never raises and has no time bound of its own.
    """
    from math_verify import verify

    try:
        mode, options = _read_op(op)
        pa, pb = _parse(a), _parse(b)
        if not pa or not pb:
            return False
        if verify(pa, pb, timeout_seconds=None, **options):
            return True
        return mode == "equiv" and verify(pb, pa, timeout_seconds=None, **options)
    except Exception:  # Math-Verify catches most errors itself; anything left means "no".
        return False


def _exit_when_orphaned(parent: int) -> None:
    # Python-level sympy loops release the GIL, so this thread can end a stuck orphan.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # not POSIX, or a lower hard limit already
        pass
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    # Math-Verify warns that its timeout is disabled: here that is intended.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    check(make_op("verify"), "1", "1")  # warm the LaTeX parser before declaring readiness
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        op, a, b = json.loads(line)
        out.write(b"1\n" if check(op, a, b) else b"0\n")
        out.flush()
