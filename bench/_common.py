"""Helpers shared by the bench scripts: commit id, device choice, GPU sync, matplotlib."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def git_commit():
    """Short hash of HEAD, or ``"unknown"`` outside a git checkout (e.g. on the GPU machine)."""
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return r.stdout.strip() or "unknown"


def select_device(choice):
    """``(xp, device name, use_gpu)`` for ``--device auto|cpu|gpu``."""
    from gpusketch._backend import cupy_available

    if choice == "gpu" and not cupy_available():
        raise SystemExit("--device gpu but CuPy sees no CUDA device")
    if choice == "gpu" or (choice == "auto" and cupy_available()):
        import cupy

        return cupy, cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode(), True
    return np, "CPU", False


def sync(xp):
    """Wait for the GPU (no-op on NumPy) so that wall-clock times cover the work."""
    if xp is not np:
        xp.cuda.Device().synchronize()


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend, or ``None`` when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
