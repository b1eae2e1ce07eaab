"""Timing and peak-memory helpers shared by the benchmark scripts."""

from __future__ import annotations

import ctypes
import gc
import threading
import time

import psutil
import torch


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond in a thread."""

    def __init__(self):
        self.proc = psutil.Process()
        self.peak = 0

    def __enter__(self):
        _release_freed_memory()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def added(self) -> int:
        return self.peak - self.base


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS so that the next peak is seen as growth (glibc only)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def best_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Best wall-clock seconds of `repeat` calls (after `warmup`)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def mib(n: int) -> str:
    return f"{n / 2**20:8.1f} MiB"
