"""gpusketch.dask on a local Dask scheduler: its calls on a chunked matrix against the in-memory ones.

Usage::

    python bench/distributed.py                        # best device, 2^22 x 64 fp64 (2 GiB)
    python bench/distributed.py --device cpu --log2n 20

(Named ``distributed.py`` because a ``bench/dask.py`` would shadow the dask
package for scripts run from ``bench/``.)  X has ``2^log2n`` rows by ``--d``
columns in row chunks of ``--chunk-rows``; blocks are NumPy on the CPU and
CuPy on the GPU (the threads scheduler; on a GPU cluster each worker would
hold its own blocks).  Rows: ``gsd.sketch`` (CountSketch and SparseSign,
m = 4d + 10), ``gsd.lstsq`` (sketch, precondition, direct: Dask's TSQR),
``gsd.low_rank`` (k = min(10, d/2)), ``gsd.rank``, ``gsd.lp_regression`` (p = 1) and ``gsd.tukey_regression``
(the oblivious sketch, τ = 3) with their times,
GB/s over X and the agreement with the in-memory call on the same array.
Writes ``bench/results/distributed-<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import git_commit, select_device, sync  # noqa: E402
import gpusketch as gs  # noqa: E402


def _timed(fn, xp, repeat=3):
    fn()
    best = np.inf
    for _ in range(repeat):
        sync(xp)
        t0 = time.perf_counter()
        out = fn()
        sync(xp)
        best = min(best, time.perf_counter() - t0)
    return out, best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--log2n", type=int, default=22)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--chunk-rows", type=int, default=1 << 19)
    p.add_argument("--commit", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    import dask
    import dask.array as da

    from gpusketch import dask as gsd
    from gpusketch.robust import tukey_regression

    xp, device, use_gpu = select_device(args.device)
    n, d = 1 << args.log2n, args.d
    rng = np.random.default_rng(0)
    A = xp.asarray(rng.standard_normal((n, d)))
    b = A @ xp.ones(d) + xp.asarray(rng.standard_normal(n))
    X = da.from_array(A, chunks=(args.chunk_rows, d), asarray=False)
    y = da.from_array(b, chunks=args.chunk_rows, asarray=False)
    rows = []
    with dask.config.set(scheduler="threads"):
        for name, S in (("CountSketch", gs.CountSketch(4 * d + 10, n, seed=1)),
                        ("SparseSign(8)", gs.SparseSign(4 * d + 10, n, seed=1))):
            out, t = _timed(lambda: gsd.sketch(S, X).compute(), xp)
            ref, t_mem = _timed(lambda: S @ A, xp)
            err = float(xp.abs(out - ref).max() / xp.abs(ref).max())
            rows.append({"task": f"sketch {name}", "seconds": t, "in_memory_s": t_mem, "GB/s": A.nbytes / t / 1e9,
                         "agreement": err})
            print(rows[-1], flush=True)
        for method in ("sketch", "precondition", "direct"):
            res, t = _timed(lambda: gsd.lstsq(X, y, method=method, seed=2), xp, repeat=1)
            ref, t_mem = _timed(lambda: gs.lstsq(A, b, method=method, seed=2), xp, repeat=1)
            rows.append({"task": f"lstsq {method}", "seconds": t, "in_memory_s": t_mem, "GB/s": A.nbytes / t / 1e9,
                         "agreement": abs(float(res.cost) / float(ref.cost) - 1)})
            print(rows[-1], flush=True)
        # Rank-k approximation (Chepurko et al. Theorem 7.13), agreement of ||A − V X||_F.
        k = min(10, d // 2)
        res, t = _timed(lambda: gsd.low_rank(X, k, eps=0.5, seed=3), xp, repeat=1)
        ref, t_mem = _timed(lambda: gs.low_rank(A, k, eps=0.5, seed=3), xp, repeat=1)
        err = float(xp.linalg.norm(A - res.V.compute() @ res.X))
        err_mem = float(xp.linalg.norm(A - ref.V @ ref.X))
        rows.append({"task": f"low_rank k={k}", "seconds": t, "in_memory_s": t_mem,
                     "GB/s": A.nbytes / t / 1e9, "agreement": abs(err / err_mem - 1)})
        print(rows[-1], flush=True)
        # Rank (Algorithm 3): agreement |rank − rank in memory|.
        r, t = _timed(lambda: gsd.rank(X, seed=3), xp, repeat=1)
        r_mem, t_mem = _timed(lambda: gs.rank(A, seed=3), xp, repeat=1)
        rows.append({"task": "rank", "seconds": t, "in_memory_s": t_mem, "GB/s": A.nbytes / t / 1e9,
                     "agreement": abs(r - r_mem)})
        print(rows[-1], flush=True)
        # ℓ1 regression by Lewis-weight sampling (two passes per step of the weights, one to gather, one for the cost).
        res, t = _timed(lambda: gsd.lp_regression(X, y, 1, seed=3), xp, repeat=1)
        ref, t_mem = _timed(lambda: gs.lp_regression(A, b, 1, seed=3), xp, repeat=1)
        rows.append({"task": "lp_regression p=1", "seconds": t, "in_memory_s": t_mem,
                     "GB/s": A.nbytes / t / 1e9, "agreement": abs(res.cost / ref.cost - 1)})
        print(rows[-1], flush=True)
        # Tukey regression by the oblivious sketch (one pass for the sketch, one for the cost).
        res, t = _timed(lambda: gsd.tukey_regression(X, y, 3.0, seed=3), xp, repeat=1)
        ref, t_mem = _timed(lambda: tukey_regression(A, b, 3.0, method="oblivious", seed=3), xp, repeat=1)
        rows.append({"task": "tukey_regression oblivious", "seconds": t, "in_memory_s": t_mem,
                     "GB/s": A.nbytes / t / 1e9, "agreement": abs(res.cost / ref.cost - 1)})
        print(rows[-1], flush=True)
    tag = "gpu" if use_gpu else "cpu"
    meta = {"date": datetime.date.today().isoformat(), "commit": args.commit or git_commit(), "device": device,
            "n": n, "d": d, "chunk_rows": args.chunk_rows, "chunks": -(-n // args.chunk_rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"distributed-{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# bench/distributed.py — {meta['date']}, commit {meta['commit']}, {device}", "",
             f"X: {n} × {d} float64 ({A.nbytes / 2**30:.1f} GiB) in {meta['chunks']} row chunks, Dask threads "
             "scheduler; agreement = max relative difference of the sketch, or |cost/cost_in_memory − 1|.", "",
             "| task | Dask s | in-memory s | GB/s (Dask) | agreement |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['seconds']:.4f} | {r['in_memory_s']:.4f} | {r['GB/s']:.1f} | {r['agreement']:.1e} |"
              for r in rows]
    (args.out / f"distributed-{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
