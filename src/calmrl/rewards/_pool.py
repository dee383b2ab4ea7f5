"""A pool of long-lived verifier processes with a per-item deadline.

Why processes and not Math-Verify's own timeout: that one uses `signal.alarm`, which works only
in the main thread, and some inputs (power towers, deep nesting) make sympy run for minutes or
crash the interpreter. A stuck or dead worker is killed and replaced, and its item scores False.

Workers are plain subprocesses running `calmrl.rewards._worker.main` talking JSON lines over
pipes, not `multiprocessing`: they never re-import the user's `__main__`, and they can be started
from daemon processes (e.g. DataLoader workers). POSIX only (the pipes are polled).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import wait
from pathlib import Path

# Where `calmrl` is importable from, for workers started by a process that found it on sys.path.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# Budget for interpreter start-up plus imports on a busy machine; not part of the item deadline.
STARTUP_TIMEOUT_S = 60.0

# A worker stuck in a long computation that holds the GIL (a huge sympy power) cannot notice
# that its parent died (kill -9), so a watchdog process beside it, which holds no GIL of the
# worker's, kills it when the pool process is gone. It imports nothing and sleeps.
_WATCHDOG = """
import os, signal, sys, time
pool, worker = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
while alive(worker):
    if os.getppid() != pool:
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    time.sleep(0.5)
"""


class _Worker:
    """One verifier subprocess with at most one request in flight."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from calmrl.rewards._worker import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.watchdog = subprocess.Popen(
            [sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), str(self.proc.pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self.ready = False
        self._buffer = b""

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, request: tuple[str, str, str]) -> None:
        # Never blocks for long: a worker without a request in flight is waiting on this pipe.
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()

    def read_lines(self) -> list[bytes] | None:
        """Complete lines available now; None at end of file (the worker died)."""
        data = os.read(self.fileno(), 65536)
        if not data:
            return None
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        return lines

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.watchdog.kill()
        self.watchdog.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):  # e.g. an unflushed request to a dead worker
                pipe.close()


class WorkerPool:
    """Runs ``(op, a, b)`` requests on up to `num_workers` processes; thread-safe.

    Each request gets `timeout_s` seconds once its worker is ready; past that, the worker is
    killed, replaced, and the request answers False. Concurrent callers share the workers.
    """

    def __init__(self, num_workers: int, timeout_s: float) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._alive = 0  # workers started and not killed: idle or lent to a caller
        self._pid = os.getpid()
        _POOLS.add(self)

    def run(self, requests: list[tuple[str, str, str]]) -> list[bool]:
        """Answer all `requests`, in parallel over the workers this call can get."""
        if not requests:
            return []
        free = self._acquire(min(len(requests), self.num_workers))
        results = [False] * len(requests)
        todo = collections.deque(range(len(requests)))
        busy: dict[_Worker, tuple[int, float]] = {}  # worker -> (request index, deadline)
        try:
            while todo or busy:
                while free and todo:
                    worker, i = free.pop(), todo.popleft()
                    try:
                        worker.send(requests[i])
                    except OSError:  # died while idle: replace it and retry the request
                        free.append(self._replace(worker))
                        todo.appendleft(i)
                        continue
                    budget = self.timeout_s + (0.0 if worker.ready else STARTUP_TIMEOUT_S)
                    busy[worker] = (i, time.monotonic() + budget)
                next_deadline = min(deadline for _, deadline in busy.values())
                for worker in wait(list(busy), timeout=max(0.0, next_deadline - time.monotonic())):
                    free.extend(self._collect(worker, busy, results))
                now = time.monotonic()
                for worker, (_, deadline) in list(busy.items()):
                    if now >= deadline:
                        self._check_started(worker)
                        del busy[worker]
                        free.append(self._replace(worker))
        except BaseException:
            for worker in busy:  # their state is unknown: do not hand them to another caller
                self._discard(worker)
            self._release(free)
            raise
        self._release(free)
        return results

    def _collect(
        self, worker: _Worker, busy: dict[_Worker, tuple[int, float]], results: list[bool]
    ) -> list[_Worker]:
        """Read `worker`'s replies; return the workers now free (itself or its replacement)."""
        lines = worker.read_lines()
        if lines is None:  # crashed (e.g. stack overflow on deep nesting): its item is False
            self._check_started(worker)
            del busy[worker]
            return [self._replace(worker)]
        for line in lines:
            if line == b"ready":
                worker.ready = True
                i, _ = busy[worker]
                busy[worker] = (i, time.monotonic() + self.timeout_s)
            else:
                i, _ = busy.pop(worker)
                results[i] = line == b"1"
                return [worker]
        return []

    def _check_started(self, worker: _Worker) -> None:
        if not worker.ready:  # the caller's cleanup discards it
            raise RuntimeError(
                "the Math-Verify worker process failed to start (see its error above); "
                "MathVerifier(num_workers=0) verifies in-process instead, without a time bound"
            )

    def _acquire(self, want: int) -> list[_Worker]:
        """At least one worker (waiting if all are lent out), at most `want`."""
        with self._cond:
            if os.getpid() != self._pid:  # forked: the parent's workers are not ours to use
                self._idle, self._alive, self._pid = [], 0, os.getpid()
            while True:
                got = [self._idle.pop() for _ in range(min(want, len(self._idle)))]
                while len(got) < want and self._alive < self.num_workers:
                    got.append(_Worker())
                    self._alive += 1
                if got:
                    return got
                self._cond.wait()

    def _release(self, workers: list[_Worker]) -> None:
        with self._cond:
            self._idle.extend(workers)
            self._cond.notify_all()

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        return _Worker()

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._cond:
            self._alive -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the idle workers (workers lent to a running call finish with it)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._alive -= len(idle)
        for worker in idle:
            worker.kill()


_POOLS: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for pool in list(_POOLS):
        pool.close()
