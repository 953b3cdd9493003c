"""Least squares and low-rank approximation against peers, in one run per device.

Usage::

    python bench/linalg.py                      # GPU when present, else CPU; full sizes
    python bench/linalg.py --device cpu --quick

Least squares (fp64, A = G diag(s) Vᵀ with condition number κ): ``lstsq``
with ``method="sketch"`` (reported with its cost ratio to the optimum),
``"precondition"`` (at the default tol and at ``tol=1e-6``, which reaches a
cost gap below 1e-10) and ``"direct"``, against ``numpy.linalg.lstsq`` and a
NumPy QR solve on the CPU; ``torch.linalg.lstsq``, ``cupy.linalg.lstsq``, a
CuPy QR solve and the normal equations on the GPU.  A b of 32 columns
(first shape, κ = 1e2): the block LSMR against 32 one-column solves and the
same peers.  Low rank (fp32, decaying spectrum): ``randomized_svd`` and
``low_rank`` against
``torch.svd_lowrank`` at the same number of power iterations (when torch is
importable) and the exact SVD error; on the CPU also against SciPy's ``svds``
(ARPACK) and scikit-learn's ``randomized_svd`` (when importable; not a
dependency).  Writes ``bench/results/linalg-<device>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import git_commit, pyplot, select_device  # noqa: E402
import gpusketch as gs  # noqa: E402
from gpusketch._timing import time_call  # noqa: E402

LSTSQ = [(1 << 20, 512), (1 << 18, 2048)]
LSTSQ_QUICK = [(1 << 16, 128), (1 << 14, 512)]
LOWRANK = [(200_000, 2000, 50), (50_000, 5000, 100)]
LOWRANK_QUICK = [(20_000, 500, 20), (5_000, 1_000, 30)]


def _torch(xp):
    try:
        import torch
    except ImportError:
        return None
    if xp is not np and not torch.cuda.is_available():
        return None
    return torch


def _sklearn_randomized_svd():
    try:
        from sklearn.utils.extmath import randomized_svd
    except ImportError:
        return None
    return randomized_svd


def problem(xp, n, d, kappa, seed=0):
    """Tall A with condition number about kappa, b = A x + noise (on xp)."""
    rng = (np.random.default_rng(seed) if xp is np else xp.random.default_rng(seed))
    G = rng.standard_normal((n, d))
    V, _ = xp.linalg.qr(rng.standard_normal((d, d)))
    A = (G * xp.logspace(0, -np.log10(kappa), d)) @ V.T
    b = A @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    return A, b


@contextlib.contextmanager
def _refine_rule(columns_per_iteration):
    """``lstsq``'s preconditioner refinement forced on (a large constant) or off (0) for one
    row of the table: both routes timed on the device whose threshold they set."""
    from gpusketch.linalg import _precondition

    names = ("REFINE_COLUMNS_PER_ITERATION", "GRAM_REFINE_COLUMNS_PER_ITERATION")  # both bands of refine_pays
    saved = {name: getattr(_precondition, name) for name in names}
    for name in names:
        setattr(_precondition, name, {"numpy": columns_per_iteration, "cupy": columns_per_iteration})
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(_precondition, name, value)


@contextlib.contextmanager
def _device_free_bytes(nbytes):
    """Size the device blocks (``device_block_rows``) as if the device had ``nbytes`` free."""
    from gpusketch import _backend

    saved = _backend.free_bytes
    _backend.free_bytes = lambda xp: nbytes
    try:
        yield
    finally:
        _backend.free_bytes = saved


def bench_lstsq(dev, xp, shapes, repeat, rows):
    torch = _torch(xp)
    for n, d in shapes:
        for kappa in (1e2, 1e8):
            A, b = problem(xp, n, d, kappa)
            opt = float(gs.lstsq(A, b, method="direct").cost)
            peers = {}

            def add(name, fn, cost_of):
                t = time_call(fn, xp, repeat=repeat, warmup=1)
                gap = cost_of(fn()) / opt - 1
                rows.append({"device": dev, "task": "lstsq", "shape": f"{n}x{d}", "kappa": kappa, "method": name,
                             "seconds": t, "cost_gap": gap})
                return t

            if xp is np:
                peers["numpy.lstsq"] = add("peer:numpy.linalg.lstsq", lambda: np.linalg.lstsq(A, b, rcond=None)[0],
                                           lambda x: float(np.linalg.norm(A @ x - b)))
            else:
                peers["cupy.lstsq"] = add("peer:cupy.linalg.lstsq", lambda: xp.linalg.lstsq(A, b, rcond=None)[0],
                                          lambda x: float(xp.linalg.norm(A @ x - b)))
                peers["normal-eq"] = add("peer:normal equations", lambda: xp.linalg.solve(A.T @ A, A.T @ b),
                                         lambda x: float(xp.linalg.norm(A @ x - b)))
                if torch is not None:
                    At, bt = torch.as_tensor(A, device="cuda"), torch.as_tensor(b, device="cuda")[:, None]
                    peers["torch.lstsq"] = add("peer:torch.linalg.lstsq", lambda: torch.linalg.lstsq(At, bt).solution,
                                               lambda x: float(torch.linalg.norm(At @ x - bt)))
            peers["qr-solve"] = add("peer:QR solve (gs direct)", lambda: gs.lstsq(A, b, method="direct"),
                                    lambda r: float(r.cost))
            if xp is not np:
                # The device route past half the free memory streams row blocks sized from it:
                # its cost against the one-block solve above, as if free memory were 2 A.
                with _device_free_bytes(2 * A.nbytes):
                    add("gpusketch direct, streamed (free = 2 A)", lambda: gs.lstsq(A, b, method="direct"),
                        lambda r: float(r.cost))
            # The default tol reaches the direct solve's accuracy; tol = 1e-6 is the time to a
            # cost gap <= 1e-10 (lstsq's docstring), the precondition target.
            for name, kw in (("sketch", {"method": "sketch"}), ("precondition", {"method": "precondition"}),
                             ("precondition (tol=1e-6)", {"method": "precondition", "tol": 1e-6})):
                t = add(f"gpusketch {name}", lambda: gs.lstsq(A, b, seed=1, **kw), lambda r: float(r.cost))
                rows[-1]["speedup"] = {k: v / t for k, v in peers.items()}
            # Both preconditioners whatever the rule (refine_pays) picks: the data for its threshold.
            for name, rule in (("R refined", 1 << 30), ("sketch's R", 0)):
                with _refine_rule(rule):
                    t = add(f"gpusketch precondition, {name}", lambda: gs.lstsq(A, b, seed=1), lambda r: float(r.cost))
                rows[-1]["speedup"] = {k: v / t for k, v in peers.items()}
            del A, b
            if xp is not np:
                xp.get_default_memory_pool().free_all_blocks()


def bench_lstsq_columns(dev, xp, shape, k, repeat, rows):
    """b of k columns (κ = 1e2): the block LSMR against k one-column solves and the peers."""
    torch = _torch(xp)
    n, d = shape
    A, _ = problem(xp, n, d, 1e2)
    rng = np.random.default_rng(3) if xp is np else xp.random.default_rng(3)
    B = A @ rng.standard_normal((d, k)) + 0.1 * rng.standard_normal((n, k))
    opt = gs.lstsq(A, B, method="direct").cost
    peers = {}

    def add(name, fn, cost_of, peer=None):
        t = time_call(fn, xp, repeat=repeat, warmup=1)
        gap = float((cost_of(fn()) / opt - 1).max())
        rows.append({"device": dev, "task": f"lstsq, {k} columns", "shape": f"{n}x{d}", "kappa": 1e2,
                     "method": name, "seconds": t, "cost_gap": gap})
        if peer:
            peers[peer] = t
        elif peers:
            rows[-1]["speedup"] = {kk: v / t for kk, v in peers.items()}
        return t

    def cols(x):
        return xp.linalg.norm(A @ x - B, axis=0)

    if xp is np:
        add("peer:numpy.linalg.lstsq", lambda: np.linalg.lstsq(A, B, rcond=None)[0], cols, "numpy.lstsq")
    else:
        add("peer:cupy.linalg.lstsq", lambda: xp.linalg.lstsq(A, B, rcond=None)[0], cols, "cupy.lstsq")
        if torch is not None:
            At, Bt = torch.as_tensor(A, device="cuda"), torch.as_tensor(B, device="cuda")
            add("peer:torch.linalg.lstsq", lambda: xp.asarray(torch.linalg.lstsq(At, Bt).solution), cols,
                "torch.lstsq")
    add("peer:QR solve (gs direct)", lambda: gs.lstsq(A, B, method="direct").x, cols, "qr-solve")
    add("peer:gpusketch precondition, one column at a time",
        lambda: xp.stack([gs.lstsq(A, B[:, j], seed=1).x for j in range(k)], axis=1), cols, "per-column")
    add("gpusketch precondition (block LSMR)", lambda: gs.lstsq(A, B, seed=1).x, cols)
    for name, rule in (("R refined", 1 << 30), ("sketch's R", 0)):
        with _refine_rule(rule):
            add(f"gpusketch precondition (block LSMR), {name}", lambda: gs.lstsq(A, B, seed=1).x, cols)
    del A, B


def bench_low_rank(dev, xp, shapes, repeat, rows):
    torch = _torch(xp)
    for n, d, k in shapes:
        A, _ = problem(xp, n, d, 1e3, seed=1)
        A = A.astype(np.float32)
        s = xp.linalg.svd(A.astype(np.float64), compute_uv=False)
        opt = float(xp.sqrt((s[k:] ** 2).sum()))

        def add(name, fn, err_of, peer_t=None):
            t = time_call(fn, xp, repeat=repeat, warmup=1)
            row = {"device": dev, "task": "low_rank", "shape": f"{n}x{d} k={k}", "kappa": None, "method": name,
                   "seconds": t, "err_ratio": err_of(fn()) / opt}
            if peer_t:
                row["speedup"] = {kk: v / t for kk, v in peer_t.items()}
            rows.append(row)
            return t

        norm = (lambda M: float(xp.linalg.norm(M)))
        peers = {}
        if xp is np:
            peers["scipy.svds"] = add("peer:scipy.sparse.linalg.svds (ARPACK)",
                                      lambda: scipy.sparse.linalg.svds(A, k, random_state=0),
                                      lambda usv: norm(A - (usv[0] * usv[1]) @ usv[2]))
            sk = _sklearn_randomized_svd()
            if sk is not None:
                peers["sklearn.randomized_svd"] = add(
                    "peer:sklearn randomized_svd(n_oversamples=10, n_iter=2)",
                    lambda: sk(A, k, n_oversamples=10, n_iter=2, random_state=0),
                    lambda usv: norm(A - (usv[0] * usv[1]) @ usv[2]))
        if torch is not None:
            At = torch.as_tensor(A, device="cuda" if xp is not np else "cpu")
            peers["torch.svd_lowrank"] = add(
                "peer:torch.svd_lowrank(q=k+10, niter=2)", lambda: torch.svd_lowrank(At, q=k + 10, niter=2),
                lambda usv: float(torch.linalg.norm(At - (usv[0][:, :k] * usv[1][:k]) @ usv[2][:, :k].T)))
        add("gpusketch randomized_svd (q=2)", lambda: gs.randomized_svd(A, k, power_iters=2, seed=1),
            lambda usv: norm(A - (usv[0] * usv[1]) @ usv[2]), peers)
        add("gpusketch low_rank (eps=0.5)", lambda: gs.low_rank(A, k, eps=0.5, seed=1),
            lambda r: norm(A - r.V @ r.X), peers)
        del A


def write(rows, meta, out, tag):
    out.mkdir(parents=True, exist_ok=True)
    (out / f"linalg-{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# bench/linalg.py — {meta['date']}, commit {meta['commit']}, {meta['device_name']}", "",
             "| task | shape | κ | method | seconds | cost/opt − 1 or err/opt | speed-up vs peers |",
             "|---|---|---:|---|---:|---:|---|"]
    for r in rows:
        q = f"{r['cost_gap']:.2e}" if "cost_gap" in r else f"{r['err_ratio']:.4f}"
        sp = ", ".join(f"{k} {v:.2f}×" for k, v in r.get("speedup", {}).items())
        lines.append(f"| {r['task']} | {r['shape']} | {r['kappa'] or ''} | {r['method']} | {r['seconds']:.4f} | {q} | {sp} |")
    (out / f"linalg-{tag}.md").write_text("\n".join(lines) + "\n")
    plt = pyplot()
    if plt is None:
        return
    # One panel per problem (task, shape); one colour per method across panels; for
    # least squares the marker says κ.  Gaps at or below 1e-16 (exact to round-off,
    # or below the optimum by round-off) sit on the floor line.
    from matplotlib import ticker

    panels = list(dict.fromkeys((r["task"], r["shape"]) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    marks = {1e2: "o", 1e8: "s", None: "D"}
    floor = 1e-16
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.2), squeeze=False)
    for ax, (task, shape) in zip(axes[0], panels):
        for r in rows:
            if (r["task"], r["shape"]) != (task, shape):
                continue
            gap = r["cost_gap"] if "cost_gap" in r else r["err_ratio"] - 1
            ax.scatter(r["seconds"], max(gap, floor), color=colours[r["method"]], marker=marks.get(r["kappa"], "o"),
                       s=36, label=r["method"] if r["kappa"] in (1e2, None) else None)
        if task.startswith("lstsq"):
            ax.axhline(floor, color="0.8", lw=0.8, zorder=0)
        ax.set(xscale="log", yscale="log", xlabel="seconds", title=f"{task} {shape}")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes[0][0].set_ylabel("cost/opt − 1 (lstsq; ○ κ=1e2, □ κ=1e8)\nerr/opt − 1 (low rank)")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.collections if not h.get_label().startswith("_")}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize=7,
               frameon=False)
    fig.suptitle(f"error vs time, {meta['device_name']}, commit {meta['commit']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(handles) // 5), 1, 1))
    fig.savefig(out / f"linalg-{tag}.png", dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--commit", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    xp, name, use_gpu = select_device(args.device)
    if not use_gpu:
        name = f"CPU {platform.machine()}"
    rows = []
    tag = ("gpu" if use_gpu else "cpu") + ("-quick" if args.quick else "")
    meta = {"date": datetime.date.today().isoformat(), "commit": args.commit or git_commit(), "device_name": name}
    t0 = time.perf_counter()
    bench_lstsq(tag, xp, LSTSQ_QUICK if args.quick else LSTSQ, args.repeat, rows)
    write(rows, meta, args.out, tag)
    bench_lstsq_columns(tag, xp, (LSTSQ_QUICK if args.quick else LSTSQ)[0], 32, args.repeat, rows)
    write(rows, meta, args.out, tag)
    bench_low_rank(tag, xp, LOWRANK_QUICK if args.quick else LOWRANK, args.repeat, rows)
    write(rows, meta, args.out, tag)
    print((args.out / f"linalg-{tag}.md").read_text())
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
