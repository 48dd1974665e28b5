"""Timing and memory probes for the benchmark: medians after warm-up, process RSS, CUDA peak memory."""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return peak_rss_mib()


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Timing:
    """Wall-clock seconds of one stage: the median (and all runs) after ``warmup`` discarded runs."""

    name: str
    runs: list[float]
    warmup: int
    rss_mib: float
    cuda_peak_mib: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["median_s"] = self.median
        return d


def time_stage(name: str, fn: Callable[[], Any], device: str | torch.device = "cpu", repeats: int = 3,
               warmup: int = 1, **extra: Any) -> tuple[Timing, Any]:
    """Run ``fn`` ``warmup`` + ``repeats`` times; return the timing and the last result.

    CUDA work is synchronised before the clock stops, so asynchronous kernels are counted.
    """
    result = None
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        result = fn()
        synchronize(device)
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs = []
    for _ in range(max(1, repeats)):
        synchronize(device)
        t0 = time.perf_counter()
        result = fn()
        synchronize(device)
        runs.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return Timing(name=name, runs=runs, warmup=warmup, rss_mib=rss_mib(), cuda_peak_mib=peak, extra=extra), result
