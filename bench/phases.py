"""Where the time of one call goes, phase by phase, on the CPU or a GPU.

    python bench/phases.py --device gpu --out DIR      # low_rank, randomized_svd, lstsq, rank, independent_rows
    python bench/phases.py --device cpu --quick        # smaller shapes, to try it out

Each phase is a function of gpusketch, an array module's ``linalg`` routine or
a kernel launch (``_kernels.call``, by kernel name), wrapped for one call in a
timer that synchronises the device before and after.  Times are inclusive: a
phase that calls another counts it too, so phases that nest add up to more
than the call.  The call runs once untimed first (kernel compilation, BLAS
warm-up).  Writes ``phases-<device>.md`` (and prints it): one table per call,
phases by time, with the call's total.  Where ``bench/linalg.py`` shows a call
far from its peer, this says which step to look at.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, git_commit, select_device, sync  # noqa: E402

import gpusketch as gs  # noqa: E402

#: (module, attribute) pairs timed in every call; module attributes are what the callers look up.
PHASES = [
    ("gpusketch.linalg.low_rank", "_constant_factor_subspace"),
    ("gpusketch.linalg.low_rank", "randomized_svd"),
    ("gpusketch.linalg.low_rank", "_orth"),
    ("gpusketch.linalg.low_rank", "orthonormalize"),
    ("gpusketch.linalg.low_rank", "top_left_singular"),
    ("gpusketch.linalg.low_rank", "full_rank_inverse"),
    ("gpusketch.linalg.low_rank", "_sketched_right_factor"),
    ("gpusketch.linalg.low_rank", "_col_sq_norms"),
    ("gpusketch.linalg.svd", "orthonormalize"),
    ("gpusketch.linalg.lstsq", "SketchPreconditioner"),
    ("gpusketch.linalg.lstsq", "_lsmr"),
    ("gpusketch.linalg.lstsq", "refine_preconditioner"),
    ("gpusketch.linalg.lstsq", "_warm_start"),
    ("gpusketch.linalg.rank", "matrix_rank"),
    ("gpusketch.linalg.rank", "proves_full_rank"),
    ("gpusketch.linalg.rank", "_sketch_rows"),
    ("gpusketch.linalg.rank", "leverage_sample"),
    ("gpusketch.linalg.rank", "_independent_columns"),
    ("gpusketch.linalg.rank", "_lu_rows"),
    ("gpusketch.linalg._numerics", "_pivoted_rank"),
]
LINALG = ("svd", "qr", "eigh", "eigvalsh", "lstsq", "cholesky")


class _Timer:
    def __init__(self, xp):
        self.xp, self.seconds, self.calls = xp, defaultdict(float), defaultdict(int)

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            sync(self.xp)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.xp)
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1

        return timed


def profile(call, xp):
    """``(total seconds, {phase: (calls, seconds)})`` of one ``call()`` with every phase timed."""
    from gpusketch import _kernels

    call()  # untimed: compilation and warm-up
    timer = _Timer(xp)
    saved = []

    def patch(owner, attr, name):
        fn = getattr(owner, attr)
        saved.append((owner, attr, fn))
        setattr(owner, attr, timer.wrap(name, fn))

    for module, attr in PHASES:
        patch(sys.modules[module], attr, f"{module.rsplit('.', 1)[1]}.{attr}")
    for attr in LINALG:
        patch(xp.linalg, attr, f"{xp.__name__}.linalg.{attr}")
    call_kernel = _kernels.call
    saved.append((_kernels, "call", call_kernel))
    _kernels.call = lambda name, *a, **k: timer.wrap(f"kernel {name}", call_kernel)(name, *a, **k)
    try:
        sync(xp)
        t0 = time.perf_counter()
        call()
        sync(xp)
        total = time.perf_counter() - t0
    finally:
        for owner, attr, fn in reversed(saved):
            setattr(owner, attr, fn)
    return total, {name: (timer.calls[name], timer.seconds[name]) for name in timer.seconds}


#: low_rank / randomized_svd shapes (n, d, k), fp32, and the lstsq shape (n, d), fp64: bench/linalg.py's;
#: rank / independent_rows shapes (n, d, rank), fp64: full rank and low rank.
LOW_RANK, LOW_RANK_QUICK = [(200000, 2000, 50), (50000, 5000, 100)], [(20000, 1000, 20), (5000, 2000, 50)]
LSTSQ, LSTSQ_QUICK = (1 << 20, 512), (65536, 128)
RANK, RANK_QUICK = [(20000, 3000, 3000), (20000, 2000, 100), (6000, 3000, 2500)], [(2000, 500, 500), (4000, 600, 40)]


def workloads(xp, quick):
    """``[(title, call)]``: ``bench/linalg.py``'s low-rank and lstsq shapes, and a full-rank and a
    low-rank matrix for rank / independent_rows (all smaller with ``quick``)."""
    rng = np.random.default_rng(0)
    out = []
    for n, d, k in LOW_RANK_QUICK if quick else LOW_RANK:
        A = xp.asarray((rng.standard_normal((n, 100)) @ rng.standard_normal((100, d))
                        + 0.1 * rng.standard_normal((n, d))).astype(np.float32))
        out.append((f"low_rank {n}x{d} k={k} fp32 (eps=0.5)", lambda A=A, k=k: gs.low_rank(A, k, eps=0.5, seed=1)))
        out.append((f"randomized_svd {n}x{d} k={k} fp32", lambda A=A, k=k: gs.randomized_svd(A, k, seed=1)))
    n, d = LSTSQ_QUICK if quick else LSTSQ
    A, b = xp.asarray(rng.standard_normal((n, d))), xp.asarray(rng.standard_normal(n))
    out.append((f"lstsq precondition {n}x{d} fp64", lambda A=A, b=b: gs.lstsq(A, b, seed=1)))
    for n, d, r in RANK_QUICK if quick else RANK:
        A = rng.standard_normal((n, d)) if r == min(n, d) else rng.standard_normal((n, r)) @ rng.standard_normal((r, d))
        A = xp.asarray(A)
        out.append((f"rank {n}x{d} of rank {r} fp64", lambda A=A: gs.rank(A, seed=1)))
        out.append((f"independent_rows {n}x{d} of rank {r} fp64", lambda A=A: gs.independent_rows(A, seed=1)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--quick", action="store_true", help="smaller shapes")
    p.add_argument("--commit", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    xp, device, use_gpu = select_device(args.device)
    commit = args.commit or git_commit()
    lines = [f"# bench/phases.py — {datetime.date.today()}, commit {commit}, {device}", "",
             "Inclusive times of one call's phases (device synchronised around each); nested phases overlap.", ""]
    record = {"meta": {"date": str(datetime.date.today()), "commit": commit, "device": device}, "calls": []}
    for title, call in workloads(xp, args.quick):
        total, phases = profile(call, xp)
        ranked = sorted(phases.items(), key=lambda kv: -kv[1][1])
        record["calls"].append({"call": title, "seconds": total,
                                "phases": [{"phase": k, "calls": c, "seconds": t} for k, (c, t) in ranked]})
        section = [f"## {title}: {total:.4f} s", "", "| phase | calls | seconds | share |", "|---|---:|---:|---:|"]
        section += [f"| {name} | {calls} | {secs:.4f} | {secs / total:.0%} |" for name, (calls, secs) in ranked]
        print("\n".join(section) + "\n", flush=True)
        lines += section + [""]
    args.out.mkdir(parents=True, exist_ok=True)
    tag = ("gpu" if use_gpu else "cpu") + ("-quick" if args.quick else "")
    (args.out / f"phases-{tag}.md").write_text("\n".join(lines))
    (args.out / f"phases-{tag}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
