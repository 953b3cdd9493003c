"""The ``gpusketch`` command.

``gpusketch info``    versions, the CUDA device, whether every kernel compiles.
``gpusketch demo``    a tall least-squares problem sketched by every operator on
                      every available device, with a table of time, effective
                      GB/s, subspace distortion and sketch-and-solve quality.
``gpusketch sketch``  sketch an on-disk ``.npy`` matrix in row chunks (or a SciPy
                      sparse matrix saved by ``scipy.sparse.save_npz``).
``gpusketch lstsq``   solve a least-squares problem stored as ``.npy`` files (A may
                      be a ``save_npz`` sparse matrix).
``gpusketch bench``   run the benchmark suites of a source checkout (``--quick``).

Exit codes: 0 success, 1 bad data or a failed computation, 2 usage errors
(unknown options, missing files).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy

from . import __version__, stream
from ._backend import check_dtype, cupy_available, is_sparse, sparse_module, to_host
from ._timing import time_call
from .operators import SRHT, CountSketch, Gaussian, Sampling, SparseSign, make_sketch
from .stream import load_npy

__all__ = ["main"]


def _devices():
    devs = [("cpu", np)]
    if cupy_available():
        import cupy

        devs.append(("gpu", cupy))
    return devs


def cmd_info(args):
    print(f"gpusketch {__version__}")
    print(f"python    {platform.python_version()} ({sys.executable})")
    print(f"numpy     {np.__version__}")
    print(f"scipy     {scipy.__version__}")
    try:
        import cupy

        print(f"cupy      {cupy.__version__}")
    except ImportError:
        print("cupy      not installed (CPU only)")
        return 0
    if not cupy_available():
        print("device    no CUDA device visible")
        return 0
    from . import _kernels

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    free, total = cupy.cuda.runtime.memGetInfo()
    print(f"device    {props['name'].decode()} (cc {props['major']}.{props['minor']}, "
          f"{props['multiProcessorCount']} SMs, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free)")
    status = 0
    for src, names in _kernels.NAME_EXPRESSIONS.items():
        try:
            mod = _kernels.load_module(src)
            for n in names:
                mod.get_function(n)
            print(f"kernels   {src}: {len(names)} compiled")
        except Exception as exc:  # report every module, then fail
            print(f"kernels   {src}: FAILED ({exc})")
            status = 1
    return status


# Generating a Gaussian sketch costs tens of ns per entry on a CPU; beyond this many
# entries the demo skips it there rather than stall.
_CPU_GAUSSIAN_ENTRIES = 1 << 27


def _demo_operators(n, m, seed):
    rng = np.random.default_rng(seed)
    uniform = np.sort(rng.choice(n, size=m, replace=False))
    return [
        ("CountSketch", CountSketch(m, n, seed=seed)),
        (f"SparseSign({min(8, m)})", SparseSign(m, n, nnz=min(8, m), seed=seed)),  # nnz <= m rows
        ("SRHT", SRHT(m, n, seed=seed)),
        ("Gaussian", Gaussian(m, n, seed=seed)),
        ("Sampling(unif)", Sampling(uniform, n, scale=np.full(m, np.sqrt(n / m)))),
    ]


def cmd_demo(args):
    n, d, m = args.n, args.d, args.m
    rng = np.random.default_rng(args.seed)
    # A tall problem with a few high-leverage rows, so uniform sampling visibly suffers.
    A = rng.standard_normal((n, d)) * np.exp(rng.standard_normal(d))
    A[: d] *= 50.0
    x_true = rng.standard_normal(d)
    b = A @ x_true + rng.standard_normal(n)
    Ab = np.column_stack([A, b])
    R = np.linalg.qr(A, mode="r")
    x_opt, *_ = np.linalg.lstsq(A, b, rcond=None)
    r_opt = np.linalg.norm(A @ x_opt - b)
    devices = [dv for dv in _devices() if args.device in ("auto", dv[0])]
    if args.device == "gpu" and len(devices) == 0:
        print("no CUDA device available", file=sys.stderr)
        return 1
    print(f"gpusketch demo: least squares with A {n} x {d} (float64), sketch size m = {m}")
    rows = []
    for dev, xp in devices:
        Ab_dev = xp.asarray(Ab)
        for name, S in _demo_operators(n, m, args.seed):
            if xp is np and name == "Gaussian" and m * n > _CPU_GAUSSIAN_ENTRIES:
                rows.append((dev, name, None, None, None, None))
                continue
            t = time_call(lambda: S @ Ab_dev, xp, repeat=args.repeat)
            SAb = S @ Ab_dev
            SAb = to_host(SAb)
            sv = np.linalg.svd(np.linalg.solve(R.T, SAb[:, :d].T).T, compute_uv=False)
            eps = max(abs(sv.max() ** 2 - 1), abs(1 - sv.min() ** 2))
            xs, *_ = np.linalg.lstsq(SAb[:, :d], SAb[:, d], rcond=None)
            ratio = np.linalg.norm(A @ xs - b) / r_opt
            rows.append((dev, name, t * 1e3, Ab.nbytes / t / 1e9, eps, ratio))
    head = f"{'device':6} {'operator':15} {'time ms':>9} {'GB/s':>8} {'distortion':>11} {'resid/opt':>10}"
    print(head)
    print("-" * len(head))
    for dev, name, ms, gbs, eps, ratio in rows:
        if ms is None:
            print(f"{dev:6} {name:15} {'skipped: m*n too large to generate on a CPU':>41}")
            continue
        print(f"{dev:6} {name:15} {ms:9.2f} {gbs:8.2f} {eps:11.3f} {ratio:10.4f}")
    print("distortion: max |sigma(S U)^2 - 1| over an orthonormal basis U of range(A);"
          " resid/opt: ||A x_sketch - b|| / ||A x_opt - b||")
    _demo_solvers(A, b, r_opt, devices, args)
    return 0


def _demo_solvers(A, b, r_opt, devices, args):
    """Second table: the algorithms on the same data, against exact answers."""
    import time

    from .linalg import low_rank, lstsq, randomized_svd
    from .robust import tukey_regression

    k = max(1, min(5, A.shape[1] - 1))
    s = np.linalg.svd(A, compute_uv=False)
    lr_opt = float(np.sqrt((s[k:] ** 2).sum()))
    Ao, bo = A.copy(), b.copy()
    rng = np.random.default_rng(args.seed + 1)
    bo[rng.choice(len(bo), len(bo) // 20, replace=False)] = 1e4  # 5 % gross outliers for Tukey
    tau = 3.0 * float(np.median(np.abs(b - A @ np.linalg.lstsq(A, b, rcond=None)[0])))
    print()
    print(f"{'device':6} {'solver':34} {'time ms':>9} {'quality':>28}")
    print("-" * 80)
    for dev, xp in devices:
        Ad, bd, Aod, bod = xp.asarray(A), xp.asarray(b), xp.asarray(Ao), xp.asarray(bo)
        full_t = tukey_regression(Aod, bod, tau, method="full", seed=args.seed)

        def row(name, fn, quality):
            if xp is not np:
                fn()  # warm-up: kernel compilation and cuBLAS/cuSOLVER handles
            t0 = time.perf_counter()
            out = fn()
            if xp is not np:
                xp.cuda.Device().synchronize()
            print(f"{dev:6} {name:34} {(time.perf_counter() - t0) * 1e3:9.2f} {quality(out):>28}")

        row("lstsq sketch (SparseSign)", lambda: lstsq(Ad, bd, method="sketch", seed=args.seed),
            lambda r: f"resid/opt {float(r.cost) / r_opt:.4f}")
        row("lstsq precondition (LSMR)", lambda: lstsq(Ad, bd, seed=args.seed),
            lambda r: f"resid/opt - 1 {float(r.cost) / r_opt - 1:.1e}")
        row(f"randomized_svd k={k}", lambda: randomized_svd(Ad, k, seed=args.seed),
            lambda usv: f"err/opt {_fro(Ad - (usv[0] * usv[1]) @ usv[2], xp) / lr_opt:.4f}")
        row(f"low_rank k={k} eps=0.5", lambda: low_rank(Ad, k, eps=0.5, seed=args.seed),
            lambda r: f"err/opt {_fro(Ad - r.V @ r.X, xp) / lr_opt:.4f}")
        row("tukey sampling (40(d+1) rows)", lambda: tukey_regression(Aod, bod, tau, seed=args.seed),
            lambda r: f"cost/full {r.cost / full_t.cost:.4f}")
        _demo_structured(xp, row, args.seed)
    print("quality against exact answers: NumPy lstsq / SVD, Tukey IRLS on all rows (5 % outliers, "
          "tau = 3 x median residual), kron method='exact' and HiGHS on all rows, the SVD baseline "
          "(fair low rank) and the pooled fit (fair regression)")


def _demo_structured(xp, row, seed):
    """Kronecker and socially fair rows of the solver table (fixed small instances)."""
    from . import fair, kron
    from .robust.lp import solve_lp_small

    rng = np.random.default_rng(seed + 2)
    F = [rng.standard_normal((300, 8)), rng.standard_normal((300, 8))]
    K = kron.KroneckerMatrix(F)
    bk = K @ rng.standard_normal(64) + rng.standard_normal(K.shape[0])
    Fd, bkd = [xp.asarray(f) for f in F], xp.asarray(bk)
    exact = kron.lstsq(Fd, bkd, method="exact").cost
    row("kron.lstsq 300x8 (x) 300x8, m=4000", lambda: kron.lstsq(Fd, bkd, m=4000, seed=seed),
        lambda r: f"cost/exact - 1 {r.cost / exact - 1:.1e}")
    G = [rng.standard_normal((100, 5)), rng.standard_normal((80, 4))]
    K1 = kron.KroneckerMatrix(G)
    b1 = K1 @ rng.standard_normal(20) + rng.laplace(size=K1.shape[0])
    A1 = K1.todense()
    l1_opt = float(np.abs(A1 @ solve_lp_small(A1, b1, 1.0) - b1).sum())
    Gd, b1d = [xp.asarray(g) for g in G], xp.asarray(b1)
    row("kron.lp_regression p=1, m=1500", lambda: kron.lp_regression(Gd, b1d, p=1, m=1500, seed=seed),
        lambda r: f"cost/opt {r.cost / l1_opt:.4f}")
    two = [xp.asarray([[2.0, 0, 0, 0], [0, 2, 0, 0]]), xp.asarray([[0, 0, 1.99, 0], [0, 0, 0, 1.99]])]
    base = fair.baseline(two, 2).cost
    row("fair.low_rank two groups, k=2", lambda: fair.low_rank(two, 2, seed=seed),
        lambda r: f"cost/SVD {r.cost / base:.4f}")
    groups = [xp.asarray(rng.standard_normal((200, 6)) + i) for i in range(3)]
    targets = [g @ xp.ones(6) + xp.asarray(rng.standard_normal(200) * (1 + i)) for i, g in enumerate(groups)]
    pooled = fair.regression(groups, targets, exact=False).cost
    row("fair.regression l2, 3 groups", lambda: fair.regression(groups, targets),
        lambda r: f"cost/pooled {r.cost / pooled:.4f}")


def _fro(M, xp):
    return float(xp.linalg.norm(M))


def _xp(device):
    if device == "gpu" or (device == "auto" and cupy_available()):
        if not cupy_available():
            raise ValueError("--device gpu but no CUDA device is available")
        import cupy

        return cupy
    return np


def _save(path, x):
    # To the file named, as printed: np.save(path) would write path + ".npy" to any other name.
    with open(path, "wb") as f:
        np.save(f, to_host(x))


def cmd_sketch(args):
    A = load_npy(args.input, mmap_mode="r", sparse=True)
    if A.ndim not in (1, 2):
        raise ValueError(f"{args.input} holds a {A.ndim}-D array; a vector or a 2-D matrix is needed")
    check_dtype(A.dtype, args.input)  # named by its file, before the sketch is drawn
    S = make_sketch(args.kind, args.m, A.shape[0], seed=args.seed)
    xp = _xp(args.device)
    Y = stream.sketch(S, A, chunk_rows=args.chunk_rows, device="gpu" if xp is not np else "cpu",
                      progress=not args.quiet)
    _save(args.output, Y)
    print(f"{type(S).__name__} {S.shape[0]} x {S.shape[1]} (seed {S.seed}) applied to {args.input} "
          f"{A.shape} -> {args.output} {tuple(Y.shape)}")
    return 0


def cmd_lstsq(args):
    from .linalg import lstsq

    xp = _xp(args.device)
    # A memory-mapped: the solvers read it in passes (the CPU's direct solve and sketches a
    # row block at a time), so the file is paged in, never copied into anonymous memory first.
    A = load_npy(args.A, mmap_mode="r", sparse=True)
    if is_sparse(A):
        A = A if xp is np else sparse_module(xp).csr_matrix(A)
    else:
        A = xp.asarray(A)
    b = xp.asarray(load_npy(args.b))
    res = lstsq(A, b, method=args.method, sketch=args.sketch, m=args.m, tol=args.tol, seed=args.seed)
    _save(args.output, res.x)
    cost = res.cost.tolist() if hasattr(res.cost, "tolist") else res.cost
    extra = "".join(f", {k}={res.info[k]}" for k in ("iterations", "preconditioner", "m", "seed") if k in res.info)
    print(f"lstsq {args.method}: ||Ax - b|| = {cost}{extra} -> {args.output}")
    return 0


#: bench suites: script, extra arguments for --quick, for a full run.
_BENCH = {
    "operators": ("operators.py", ["--quick"], []),
    "linalg": ("linalg.py", ["--quick"], []),
    "kron": ("kron.py", ["--trials", "1"], ["--l1", "--scale"]),
    "fair": ("fair.py", ["--trials", "5", "--trials-b", "1"], []),
    "robust": ("robust.py", ["--quick"], ["--scale"]),
    "stream": ("stream.py", ["--gb", "0.5", "--passes", "2"], []),
    "distributed": ("distributed.py", ["--log2n", "18"], []),
}


def cmd_bench(args):
    """Run bench suites from a source checkout's ``bench/`` (they write JSON and Markdown tables)."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    if not bench.is_dir():
        print("error: gpusketch bench needs a source checkout (bench/ is not shipped in the wheel)",
              file=sys.stderr)
        return 2
    names = list(_BENCH) if args.only is None else args.only.split(",")
    unknown = [n for n in names if n not in _BENCH]
    if unknown:
        print(f"error: unknown suite(s) {', '.join(unknown)}; choose from {', '.join(_BENCH)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        script, quick, full = _BENCH[name]
        device = args.device
        if name == "operators":
            device = {"auto": "all"}.get(device, device)
        cmd = [sys.executable, str(bench / script), "--device", device] + (quick if args.quick else full)
        if args.out:
            cmd += ["--out", args.out]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
    out = args.out or str(bench / "results")
    if failed:
        print(f"error: suite(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"tables written under {out}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="gpusketch", description="Randomized sketching on CUDA and NumPy.")
    p.add_argument("--version", action="version", version=f"gpusketch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="versions, device, kernel compilation check")
    pi.set_defaults(func=cmd_info)
    pd = sub.add_parser("demo", help="sketch a least-squares problem with every operator and device")
    pd.add_argument("--n", type=int, default=100_000, help="rows of A (default 100000)")
    pd.add_argument("--d", type=int, default=16, help="columns of A (default 16)")
    pd.add_argument("--m", type=int, default=400, help="sketch size (default 400)")
    pd.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    pd.add_argument("--repeat", type=int, default=3, help="timed repetitions (median reported)")
    pd.add_argument("--seed", type=int, default=0)
    pd.set_defaults(func=cmd_demo)
    kinds = ("countsketch", "sparse_sign", "gaussian", "srht", "fast_embedding")
    ps = sub.add_parser("sketch", help="sketch the rows of a .npy matrix, reading it in chunks")
    ps.add_argument("input", help="INPUT.npy, an n x d matrix or a vector of length n, or INPUT.npz, a sparse "
                                  "matrix saved by scipy.sparse.save_npz")
    ps.add_argument("-m", type=int, required=True,
                    help="sketch size (rows of the output; an srht has at most n rounded up to a power of two)")
    ps.add_argument("--kind", choices=kinds, default="countsketch")
    ps.add_argument("-o", "--output", required=True, help="OUT.npy for the m x d sketch (length m for a vector)")
    ps.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    ps.add_argument("--seed", type=int, default=None)
    ps.add_argument("--chunk-rows", type=int, default=None)
    ps.add_argument("--quiet", action="store_true", help="no progress bar")
    ps.set_defaults(func=cmd_sketch, inputs=("input",))
    pl = sub.add_parser("lstsq", help="solve min ||Ax - b|| for A.npy (memory-mapped), b.npy")
    pl.add_argument("A", help="A.npy (n x d), or A.npz, a sparse matrix saved by scipy.sparse.save_npz")
    pl.add_argument("b", help="b.npy (n, or n x k)")
    pl.add_argument("--method", choices=("precondition", "sketch", "direct"), default="precondition")
    pl.add_argument("--sketch", choices=kinds, default="sparse_sign")
    pl.add_argument("-m", type=int, default=None, help="sketch size")
    pl.add_argument("--tol", type=float, default=1e-10)
    pl.add_argument("--seed", type=int, default=None)
    pl.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    pl.add_argument("-o", "--output", required=True, help="x.npy")
    pl.set_defaults(func=cmd_lstsq, inputs=("A", "b"))
    pb = sub.add_parser("bench", help="run the benchmark suites of a source checkout and write their tables")
    pb.add_argument("--quick", action="store_true", help="small sizes and few trials (minutes)")
    pb.add_argument("--only", default=None, help=f"comma-separated suites out of {','.join(_BENCH)}")
    pb.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    pb.add_argument("--out", default=None, help="directory for the JSON/Markdown tables (default bench/results)")
    pb.set_defaults(func=cmd_bench)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        for name in ("n", "d", "m", "repeat"):
            if getattr(args, name) < 1:
                build_parser().error(f"--{name} must be >= 1")
        if args.m > args.n:
            build_parser().error(f"--m must be <= --n, got m={args.m} > n={args.n}")
        if args.m <= args.d:
            build_parser().error(f"--m must exceed --d for a least-squares sketch, got m={args.m}, d={args.d}")
        if args.seed < 0:
            build_parser().error(f"--seed must be >= 0, got {args.seed}")
    parser = build_parser()
    for name in getattr(args, "inputs", ()):
        path = getattr(args, name)
        if not os.path.isfile(path):
            parser.error(f"{name}: file not found: {path}")
    output = getattr(args, "output", None)
    if output is not None and not os.path.isdir(os.path.dirname(output) or "."):  # before the work, not after it
        parser.error(f"--output: folder not found: {os.path.dirname(output)}")
    if output is not None and os.path.isdir(output):
        parser.error(f"--output {output} is a folder; name the .npy file to write")
    for name in getattr(args, "inputs", ()):
        # The input is read memory-mapped while the output is written: one file cannot be both.
        if output is not None and os.path.exists(output) and os.path.samefile(getattr(args, name), output):
            parser.error(f"--output {output} is the input {name}; write the result to another file")

    def show(message, category, filename, lineno, file=None, line=None):
        # A warning is part of the command's output, not a pointer into gpusketch's source.
        print(f"gpusketch {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            return args.func(args)
    except (ValueError, TypeError, OSError, MemoryError) as exc:
        print(f"gpusketch {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
