"""SIGTERM (what clusters send before preemption) and SIGINT end a run cleanly: the step in
flight finishes, a checkpoint is written, the process exits non-zero with one line."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class StopFlag:
    signal: int = 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Within the block, the first SIGTERM/SIGINT sets the flag; a second one interrupts."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed in the main thread
        return

    def handler(signum: int, _frame: object) -> None:
        if flag.signal:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: step abandoned")
        flag.signal = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
