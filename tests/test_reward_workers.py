"""A reward worker stuck in a GIL-holding computation dies with its parent (kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

PARENT = """
import sys, time
from calmrl.rewards._pool import _Worker
worker = _Worker()
while b"ready" not in (worker.read_lines() or [b"ready"]):
    pass
# 3^987654321: sympy evaluates the power eagerly, in C, holding the GIL for a long time.
worker.send(["verify", "1", "3^{987654321}"])
print(worker.proc.pid, worker.watchdog.pid, flush=True)
time.sleep(60)
"""


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (killed, not yet reaped by init) counts as gone.
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split(")")[-1].split()[0] == "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_exits_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        worker, watchdog = map(int, parent.stdout.readline().split())
        time.sleep(1.0)  # the worker is busy inside the power now
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not (gone(worker) and gone(watchdog)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gone(worker) and gone(watchdog)
    finally:
        for pid in (parent.pid,):
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
