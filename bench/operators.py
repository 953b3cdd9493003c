"""Sketch operators on the standard grid, against peers in the same process.

Usage::

    python bench/operators.py                    # every available device, full grid
    python bench/operators.py --device cpu --quick
    python bench/operators.py --device gpu --dtypes float32

For each (shape, dtype, layout) it times ``S @ A`` for every operator on
every device, and the peers: ``scipy.linalg.clarkson_woodruff_transform`` and
a SciPy CSR sketch on the CPU; the cupyx (cuSPARSE) CSR sketch and a cuBLAS
GEMM with a stored Gaussian matrix on the GPU.  It reports the median time,
effective GB/s of A read, that rate as a fraction of the device's measured
copy bandwidth (read + write), and the ratio of each peer's time to ours.
Writes ``bench/results/operators-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy
import scipy.linalg
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gpusketch as gs  # noqa: E402
from gpusketch import _kernels, _random  # noqa: E402
from gpusketch._backend import cupy_available  # noqa: E402
from gpusketch._timing import copy_bandwidth, time_call  # noqa: E402

GRID = [(1 << 22, 64, 1024), (1 << 20, 256, 2048), (1 << 24, 16, 256), (1 << 20, 1024, 8192), (1 << 22, 64, 64)]
QUICK = [(1 << 20, 64, 1024), (1 << 18, 256, 2048), (1 << 20, 16, 256), (1 << 16, 1024, 8192), (1 << 20, 64, 64)]
SEED = 2026


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def device_name(xp):
    if xp is np:
        return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
    return props["name"].decode()


def countsketch_csr(S, xp):
    """The CountSketch S as an explicit CSR matrix (for the SpMM peers)."""
    b, s = S.hashes(xp)
    n = S.shape[1]
    if xp is np:
        return sp.csr_matrix(sp.csc_matrix((s[:, 0].astype(np.float64), b[:, 0], np.arange(n + 1)), shape=S.shape))
    import cupyx.scipy.sparse as csp

    return csp.csc_matrix((s[:, 0].astype(xp.float64), b[:, 0], xp.arange(n + 1)), shape=S.shape).tocsr()


def random_dense(xp, n, d, dtype, order="C"):
    if xp is np:
        A = np.random.default_rng(SEED).standard_normal((n, d), dtype=np.float64 if dtype == "float64" else np.float32)
    else:
        A = xp.random.RandomState(SEED).standard_normal((n, d), dtype=dtype)
    return xp.asfortranarray(A) if order == "F" else A


def random_csr(xp, n, d, dtype, density=0.01):
    nnz = int(n * d * density)
    rng = np.random.default_rng(SEED)
    rows = rng.integers(0, n, nnz)
    cols = rng.integers(0, d, nnz)
    vals = rng.standard_normal(nnz).astype(dtype)
    A = sp.csr_matrix((vals, (rows, cols)), shape=(n, d))
    A.sum_duplicates()
    if xp is np:
        return A
    import cupyx.scipy.sparse as csp

    return csp.csr_matrix(A)


def record(rows, **kw):
    rows.append(kw)
    r = kw
    peer = "  ".join(f"{k}={v:.2f}x" for k, v in r.get("speedup", {}).items())
    gbs = f"{r['gbps']:8.1f} GB/s {100 * r['frac_copy']:5.1f}%" if r.get("gbps") is not None else " " * 20
    print(f"{r['device']:4} {r['dtype']:8} {r['shape']:>22} {r['layout']:6} {r['op']:22} "
          f"{r['ms']:10.3f} ms {gbs}  {peer}", flush=True)


def bench_device(dev, xp, shapes, dtypes, repeat, max_gaussian_entries, save):
    bw = copy_bandwidth(xp, nbytes=(1 << 30) if xp is not np else (1 << 28))
    print(f"# {dev}: {device_name(xp)}; measured copy bandwidth {bw / 1e9:.1f} GB/s", flush=True)
    rows = []
    result = {"device": dev, "name": device_name(xp), "copy_gbps": bw / 1e9, "rows": rows}
    for n, d, m in shapes:
        for dtype in dtypes:
            item = np.dtype(dtype).itemsize
            A = random_dense(xp, n, d, dtype)
            nbytes = n * d * item
            shape = f"{n}x{d}->{m}"
            cs = gs.CountSketch(m, n, seed=SEED)
            S_csr = countsketch_csr(cs, xp).astype(dtype)

            def emit(op, layout, t, speedup=None, read=nbytes):
                record(rows, device=dev, dtype=dtype, shape=shape, layout=layout, op=op, ms=t * 1e3,
                       gbps=read / t / 1e9, frac_copy=read / t / bw, speedup=speedup or {})

            # Peers first, so ratios can be attached to our rows.
            t_spmm = time_call(lambda: S_csr @ A, xp, repeat=repeat)
            emit("peer:csr-spmm" if xp is np else "peer:cusparse-spmm", "C", t_spmm)
            peers = {"spmm": t_spmm}
            if xp is np and dtype == "float64":
                t_cwt = time_call(lambda: scipy.linalg.clarkson_woodruff_transform(A, m, seed=SEED), xp,
                                  repeat=repeat)
                emit("peer:scipy-cwt", "C", t_cwt)
                peers["scipy-cwt"] = t_cwt
            gemm_bytes = m * n * item
            G = None
            if xp is not np and gemm_bytes <= (16 << 30):
                G = _kernels.call("gaussian_block", xp, m, 0, n, 1.0 / np.sqrt(m), SEED, _random.STREAM_GAUSSIAN, dtype)
                t_gemm = time_call(lambda: G @ A, xp, repeat=repeat)
                emit("peer:cublas-gemm", "C", t_gemm)
                peers["gemm"] = t_gemm
                del G

            def ours(op_name, S, layout="C", operand=None, peer_keys=("spmm", "scipy-cwt", "gemm")):
                X = A if operand is None else operand
                t = time_call(lambda: S @ X, xp, repeat=repeat)
                emit(op_name, layout, t, {k: peers[k] / t for k in peer_keys if k in peers})

            ours("CountSketch", cs)
            if xp is not np:  # the cost of bit-reproducibility (the CPU twins are deterministic anyway)
                ours("CountSketch(deterministic)", gs.CountSketch(m, n, seed=SEED, deterministic=True))
            ours("SparseSign(nnz=8)", gs.SparseSign(m, n, nnz=8, seed=SEED))
            ours("SRHT", gs.SRHT(m, n, seed=SEED))
            if m * n <= max_gaussian_entries:
                ours("Gaussian", gs.Gaussian(m, n, seed=SEED))
            # Column-major A and the right sketch A^T @ S^T, CountSketch.
            AF = xp.asfortranarray(A)
            ours("CountSketch", cs, layout="F", operand=AF, peer_keys=("spmm",))
            del AF
            AT = xp.ascontiguousarray(A.T)
            t = time_call(lambda: AT @ cs.T, xp, repeat=repeat)
            t_peer = time_call(lambda: (S_csr @ AT.T).T, xp, repeat=repeat)
            emit("peer:right-spmm", "right", t_peer)
            emit("CountSketch", "right", t, {"spmm": t_peer / t})
            del AT, A
            # CSR A at 1 % density: ours vs the SpGEMM with S as CSR.
            Acsr = random_csr(xp, n, d, dtype)
            csr_bytes = Acsr.data.nbytes + Acsr.indices.nbytes + Acsr.indptr.nbytes
            t_peer = time_call(lambda: S_csr @ Acsr, xp, repeat=repeat)
            emit("peer:csr-spgemm", "csr1%", t_peer, read=csr_bytes)
            t = time_call(lambda: cs @ Acsr, xp, repeat=repeat)
            emit("CountSketch", "csr1%", t, {"spgemm": t_peer / t}, read=csr_bytes)
            del Acsr, S_csr
            if xp is not np:
                xp.get_default_memory_pool().free_all_blocks()
            save(result)  # partial tables survive an interrupted run
    # Kronecker CountSketch of a vector b of length prod(n_i): one pass over b.
    for dims, ms in [((1 << 10, 1 << 10, 1 << 6), (64, 64, 16))] if shapes is GRID else [((1 << 8, 1 << 8, 1 << 6), (32, 32, 8))]:
        for dtype in dtypes:
            K = gs.Kronecker([gs.CountSketch(mi, ni, seed=SEED + i) for i, (mi, ni) in enumerate(zip(ms, dims))])
            N = int(np.prod(dims))
            b = random_dense(xp, N, 1, dtype)[:, 0]
            t = time_call(lambda: K @ b, xp, repeat=repeat)
            record(rows, device=dev, dtype=dtype, shape=f"{'x'.join(map(str, dims))}->{K.shape[0]}", layout="vector",
                   op="Kronecker(CountSketch)", ms=t * 1e3, gbps=b.nbytes / t / 1e9, frac_copy=b.nbytes / t / bw,
                   speedup={})
            del b
    save(result)
    return result


def markdown(results, meta):
    out = [f"# bench/operators.py — {meta['date']}, commit {meta['commit']}", ""]
    for res in results:
        out += [f"## {res['device']}: {res['name']} (measured copy bandwidth {res['copy_gbps']:.0f} GB/s)", "",
                "| dtype | shape n×d→m | layout | operator | time ms | GB/s of A | % of copy BW | speed-up vs peers |",
                "|---|---|---|---|---:|---:|---:|---|"]
        for r in res["rows"]:
            sp_ = ", ".join(f"{k} {v:.2f}×" for k, v in r["speedup"].items())
            out.append(f"| {r['dtype']} | {r['shape']} | {r['layout']} | {r['op']} | {r['ms']:.3f} | "
                       f"{r['gbps']:.1f} | {100 * r['frac_copy']:.1f} | {sp_} |")
        out.append("")
    out.append("GB/s counts the bytes of A read once (CSR: data + indices + indptr); % of copy BW divides it by "
               "the measured device-to-device copy rate (bytes read + written). Speed-up = peer time / our time.")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("all", "cpu", "gpu"), default="all")
    p.add_argument("--quick", action="store_true", help="smaller grid (minutes on a laptop CPU)")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    args = p.parse_args(argv)
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(("cpu", np))
    if args.device in ("all", "gpu"):
        if cupy_available():
            import cupy

            devices.append(("gpu", cupy))
        elif args.device == "gpu":
            p.error("no CUDA device available")
    shapes = QUICK if args.quick else GRID
    dtypes = args.dtypes.split(",")
    meta = {"date": datetime.date.today().isoformat(), "commit": args.commit or git_commit(), "quick": args.quick,
            "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "-".join(dev for dev, _ in devices) + ("-quick" if args.quick else "")
    done = []

    def save(current):
        results = done + [current]
        (args.out / f"operators-{tag}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        (args.out / f"operators-{tag}.md").write_text(markdown(results, meta))

    for dev, xp in devices:
        # Gaussian generation is ~50 ns per entry on a CPU: only small cases there.
        max_g = (1 << 26) if xp is np else (1 << 36)
        done.append(bench_device(dev, xp, shapes, dtypes, args.repeat, max_g, save))
    print(f"wrote {args.out / f'operators-{tag}.md'}")


if __name__ == "__main__":
    main()
