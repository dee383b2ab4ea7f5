"""Shared helpers for benchmarks: machine description, peak-RSS sampling, median timing."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from calmrl.models.linear_kernel import onednn_available, onednn_linear


def machine() -> str:
    cpu, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and cpu == "unknown CPU":
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    cpu = f"{cpu} [{' '.join(shown) or 'no AVX2'}]"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def today() -> str:
    return datetime.date.today().isoformat()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's resident memory every few ms while the block runs."""

    def __enter__(self) -> PeakRSS:
        self.start = _rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def peak_gib(self) -> float:
        return self.peak / 2**30


def alternate(
    runs: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, Any], dict[str, float]]:
    """Run each callable ``repeats`` times, interleaved (ABCABC...) so drift hits all alike.

    Returns wall times per name, the last result per name and peak RSS (GiB) per name.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, Any] = {}
    peaks: dict[str, float] = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, fn in runs.items():
            with PeakRSS() as rss:
                start = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], rss.peak_gib)
    return times, results, peaks


def median(values: list[float]) -> float:
    return statistics.median(values)


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """This machine's dense matmul rate in ``dtype`` (GFLOP/s, best of ``repeats``): the
    ceiling that model throughput is compared with. The faster of PyTorch's default matmul
    and, in fp32, oneDNN's (1.5x MKL's on an AMD EPYC: ``calmrl.models.linear_kernel``)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    kernels = [lambda: a @ b]
    if dtype == torch.float32 and onednn_available():
        kernels.append(lambda: onednn_linear(a, b))
    best = float("inf")
    with torch.no_grad():
        for kernel in kernels:
            kernel()  # warm-up
            for _ in range(repeats):
                started = time.perf_counter()
                kernel()
                best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def decode_flops_per_token(model: Any) -> float:
    """~2 FLOPs per weight per generated token (the matmuls; attention over the cache adds a
    little at these lengths): the numerator of the fraction-of-peak figure."""
    return 2.0 * sum(p.numel() for p in model.parameters() if p.dim() >= 2)
