"""Timing and memory helpers shared by the benchmarks."""
from __future__ import annotations

import ctypes
import gc
import statistics
import threading
import time
from typing import Callable

import psutil


def median_seconds(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeat` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def alternate(sides: dict[str, Callable[[], object]], repeat: int = 3, warmup: int = 1) -> dict[str, float]:
    """{name: median wall time} of each side, timed the same way: `warmup` untimed runs of every side,
    then `repeat` rounds in which every side runs once, in turn, so a change in the machine's load
    during the measurement hits all sides alike."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeat):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def release_free_memory() -> None:
    """Collect garbage and hand the allocator's free pages back to the OS (glibc ``malloc_trim``), so
    that memory kept from an earlier, larger call does not hide the next call's peak."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is then a lower bound
        pass


def peak_rss_mib(fn: Callable[[], object], interval: float = 0.002) -> float:
    """Peak resident memory (RSS, sampled by psutil every `interval` s in a thread) while `fn()` runs,
    minus the RSS just before it (after :func:`release_free_memory`): the extra memory the call
    needs, in MiB."""
    release_free_memory()
    proc = psutil.Process()
    start = proc.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return (peak[0] - start) / 2 ** 20
