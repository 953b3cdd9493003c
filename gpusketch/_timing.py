"""Wall-clock timing of device work, shared by ``gpusketch demo`` and ``bench/``.

GPU work is asynchronous: the device is synchronised before reading the
clock.  Not used by tests (timing never appears in a test).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

__all__ = ["time_call", "copy_bandwidth"]


def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def time_call(fn, xp, *, repeat=5, warmup=1):
    """Median seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(xp)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(xp)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(xp, nbytes=1 << 30, repeat=5):
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    n = max(1, nbytes // 8)
    src = xp.ones(n)
    dst = xp.empty_like(src)
    t = time_call(lambda: xp.copyto(dst, src), xp, repeat=repeat)
    return 2 * src.nbytes / t
