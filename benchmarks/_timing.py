"""Small timing helpers: best-of / median wall times, interleaved so both sides see the same load."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, running them in turn to share machine noise."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, times: dict[str, float], reference: str) -> None:
    print(title)
    for name, t in times.items():
        ratio = t / times[reference]
        print(f"  {name:<40} {t * 1000:9.1f} ms   {ratio:5.2f}x vs {reference}")
