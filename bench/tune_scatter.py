"""Tuning notes for the GPU hashing scatter: which strategy wins on which shape.

Times the three row-major strategies of ``_kernels._hash_sketch_dense_gpu``
(global atomics and bucket sorted) directly through the kernels, on the shapes where the choice matters,
checks each against the CPU twin once, and prints a table.  Used to set
``_SORTED_MIN_ROW_BYTES``; the shared-memory variant it once timed lost
everywhere and was removed (figures in ``_kernels.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy  # noqa: E402

from gpusketch import _kernels, _random  # noqa: E402
from gpusketch._timing import time_call  # noqa: E402

SHAPES = [(1 << 24, 16, 256), (1 << 22, 64, 64), (1 << 22, 32, 128), (1 << 20, 256, 2048), (1 << 21, 512, 1024),
          (1 << 20, 1024, 8192)]


def main():
    seed, stream = 7, _random.STREAM_COUNTSKETCH
    k0, k1 = _random.split_seed(seed)
    print(f"{'shape':>20} {'dtype':8} {'strategy':14} {'ms':>8} {'GB/s':>8}")
    for n, d, m in SHAPES:
        for dtype in (np.float32, np.float64):
            A = cupy.random.RandomState(1).standard_normal((n, d), dtype=dtype)
            T = _kernels._ctype(dtype)
            bx = min(32, 1 << max(0, (d - 1).bit_length()))
            by = 256 // bx
            ref = None

            def args(out):
                return (A, np.int64(n), np.int32(d), np.int64(d), np.int64(1), np.int64(0), np.int32(m),
                        np.int32(1), dtype(1.0), np.uint32(k0), np.uint32(k1), np.uint32(stream), out)

            variants = {"atomic": lambda out: _kernels._kernel("hash_sketch.cu", f"hash_sketch_rowmajor<{T}>")(
                (_kernels._grid(n, by, cupy),), (bx, by), args(out))}
            if d >= 64:
                def sorted_(out):
                    b, s = _kernels._hash_values_gpu(0, n, m, 1, seed, stream)
                    keys = b.ravel()
                    order = cupy.argsort(keys)
                    start = cupy.searchsorted(keys[order], cupy.arange(m + 1, dtype=keys.dtype))
                    tx = min(256, 32 * -(-d // 32))
                    _kernels._kernel("hash_sketch.cu", f"hash_sketch_sorted<{T}>")(
                        (m, -(-d // tx)), (tx,), (A, np.int32(d), np.int64(d), np.int64(1), np.int32(1), dtype(1.0),
                                                  order, s.ravel()[order], start.astype(cupy.int64), out))
                variants["sorted"] = sorted_
            for name, fn in variants.items():
                out = cupy.zeros((m, d), dtype=dtype)
                fn(out)
                if ref is None:
                    ref = out.get()
                err = np.abs(out.get() - ref).max() / np.abs(ref).max()
                assert err < 1e-4, (name, err)
                t = time_call(lambda: fn(cupy.zeros((m, d), dtype=dtype)), cupy, repeat=7)
                print(f"{f'{n}x{d}->{m}':>20} {np.dtype(dtype).name:8} {name:14} {t * 1e3:8.3f} {A.nbytes / t / 1e9:8.1f}",
                      flush=True)
            del A


if __name__ == "__main__":
    main()
