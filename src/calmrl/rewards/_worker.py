"""Math-Verify calls, and the worker process that runs them for the pool in `_pool.py`.

Protocol (one JSON request per line on stdin, one reply per line on stdout): the worker first
prints ``ready`` once its imports are warm, then answers each ``[op, a, b]`` with ``1`` or ``0``.
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

# Address-space cap per worker: a runaway sympy computation (huge powers, factorials) then
# raises MemoryError inside Math-Verify, which returns False, instead of eating the machine.
WORKER_MEMORY_BYTES = 4 << 30


@functools.lru_cache(maxsize=8192)
def _parse(answer: str) -> list:
    """Parse one answer string; cached because golds repeat across the n samples of a problem."""
    from math_verify import parse

    # Wrapping in a box makes Math-Verify read exactly this string (and nothing around it).
    # parsing_timeout=None: its signal.alarm timeout breaks outside the main thread; the caller
    # bounds time instead.
    return parse("\\boxed{" + answer + "}", parsing_timeout=None)


def check(op: str, a: str, b: str) -> bool:
    """``verify``: is answer `b` correct for gold `a`? ``equiv``: are `a` and `b` equivalent?

    Math-Verify's `verify(gold, pred)` is not symmetric (e.g. ``x=3`` as gold accepts ``3``);
    equivalence accepts either direction. Never raises and has no time bound of its own.
    """
    from math_verify import verify

    try:
        pa, pb = _parse(a), _parse(b)
        if not pa or not pb:
            return False
        if verify(pa, pb, timeout_seconds=None):
            return True
        return op == "equiv" and verify(pb, pa, timeout_seconds=None)
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
    check("verify", "1", "1")  # warm the LaTeX parser before declaring readiness
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        op, a, b = json.loads(line)
        out.write(b"1\n" if check(op, a, b) else b"0\n")
        out.flush()
