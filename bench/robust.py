"""Tukey regression reductions: the paper's Figure 5 setting, and a scale-up against statsmodels.

Usage::

    python bench/robust.py                 # Figure 5 (n = 10^4, d = 20) on the best device
    python bench/robust.py --scale         # also n = 10^7, d = 50 (GPU) against statsmodels RLM
    python bench/robust.py --device cpu --scale --scale-n 1000000   # the same at a CPU-sized n
    python bench/robust.py --no-figure5 --scale   # only the scale-up (robust-<device>-scale.*)
    python bench/robust.py --device cpu --quick

Figure 5: Gaussian A (n × d) and b, τ = 10, without and with outliers (5 % of
b set to 10^4); sketch sizes 2d … 10d; approximation ratio
``||A x̂ − b||_M / ||A x* − b||_M`` (x* from IRLS on all rows), best of 10
repetitions, for row sampling and the oblivious sketch.  Writes
``bench/results/robust-<device>.{json,md,png}``.
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

from _common import git_commit, pyplot, select_device  # noqa: E402
from gpusketch.robust import TukeyLoss, tukey_regression  # noqa: E402


def data(xp, n, d, outliers, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    b = rng.standard_normal(n)
    if outliers:
        b[rng.choice(n, n // 20, replace=False)] = 1e4
    return xp.asarray(A), xp.asarray(b)


def figure5(xp, n, d, tau, trials, rows):
    for outliers in (False, True):
        A, b = data(xp, n, d, outliers)
        t0 = time.perf_counter()
        full = tukey_regression(A, b, tau, method="full", seed=1)
        t_full = time.perf_counter() - t0
        for k in (2, 3, 4, 5, 6, 8, 10):
            for method in ("sampling", "oblivious"):
                t0 = time.perf_counter()
                red = tukey_regression(A, b, tau, method=method, rows=k * d, trials=trials, seed=2)
                rows.append({"n": n, "d": d, "outliers": outliers, "size": k * d, "method": method, "trials": trials,
                             "reduced_rows": red.info["reduced_rows"], "ratio": red.cost / full.cost,
                             "seconds": time.perf_counter() - t0, "full_seconds": t_full})
                print(rows[-1], flush=True)


def scale_up(xp, n, d, tau, trials, rows):
    import statsmodels.api as sm

    A, b = data(xp, n, d, True, seed=3)
    reductions = {}
    for method in ("sampling", "oblivious"):
        t0 = time.perf_counter()
        red = tukey_regression(A, b, tau, method=method, rows=10 * d, trials=trials, seed=4)
        reductions[method] = (red, time.perf_counter() - t0)
        # Logged before statsmodels runs, so a time limit that stops it still leaves these.
        print(f"scale {method}: n={n} d={d} {reductions[method][1]:.2f} s, cost {red.cost:.6e}", flush=True)
    An, bn = (A.get(), b.get()) if xp is not np else (A, b)
    t0 = time.perf_counter()
    fit = sm.RLM(bn, An, M=sm.robust.norms.TukeyBiweight(c=tau)).fit()
    t_sm = time.perf_counter() - t0
    theirs = TukeyLoss(tau).total(An @ fit.params - bn)
    for method, (red, t_red) in reductions.items():
        rows.append({"n": n, "d": d, "outliers": True, "size": 10 * d,
                     "method": f"{method} (best of {trials}) vs statsmodels RLM", "trials": trials,
                     "reduced_rows": red.info["reduced_rows"], "ratio": red.cost / theirs, "seconds": t_red,
                     "full_seconds": t_sm})
        print(rows[-1], flush=True)


def write(rows, meta, out, tag):
    out.mkdir(parents=True, exist_ok=True)
    (out / f"robust-{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# bench/robust.py — {meta['date']}, commit {meta['commit']}, {meta['device']}", "",
             "| n | d | outliers | sketch size | method | trials | reduced rows | ratio to full | seconds | full solve s |",
             "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['d']} | {r['outliers']} | {r['size']} | {r['method']} | {r['trials']} | "
                     f"{r['reduced_rows']} | {r['ratio']:.3f} | {r['seconds']:.2f} | {r['full_seconds']:.2f} |")
    lines += ["", "ratio to full: Tukey cost (on all rows) of the best of `trials` reductions over the full "
              "solve's; seconds: the whole call, all trials and their costs on all rows included; full solve s: "
              "one IRLS on all rows (statsmodels RLM in the scale rows)."]
    (out / f"robust-{tag}.md").write_text("\n".join(lines) + "\n")
    plt = pyplot()
    if plt is None or not any(r["method"] in ("sampling", "oblivious") for r in rows):
        return  # no Figure 5 rows (a scale-only run): nothing to plot
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, outliers in zip(axes, (False, True)):
        for method, mark in (("sampling", "o-"), ("oblivious", "s--")):
            sel = [r for r in rows if r["outliers"] == outliers and r["method"] == method]
            ax.plot([r["size"] for r in sel], [r["ratio"] for r in sel], mark, label=method)
        ax.set(title=f"Gaussian, tau = 10{' (with outliers)' if outliers else ''}", xlabel="rows of the sketch")
        ax.legend()
    axes[0].set_ylabel("approximation ratio (best of trials)")
    fig.tight_layout()
    fig.savefig(out / f"robust-{tag}.png", dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--quick", action="store_true", help="3 trials instead of 10")
    p.add_argument("--scale", action="store_true", help="n = 10^7, d = 50 against statsmodels RLM")
    p.add_argument("--scale-n", type=int, default=10_000_000, help="rows of the --scale problem")
    p.add_argument("--scale-trials", type=int, default=3, help="reductions tried in --scale (best kept)")
    p.add_argument("--no-figure5", action="store_true", help="only the --scale run (its own device call)")
    p.add_argument("--commit", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    xp, device, use_gpu = select_device(args.device)
    tag = ("gpu" if use_gpu else "cpu") + ("-quick" if args.quick else "")
    meta = {"date": datetime.date.today().isoformat(), "commit": args.commit or git_commit(), "device": device}
    rows = []
    if not args.no_figure5:
        figure5(xp, 10_000, 20, 10.0, 3 if args.quick else 10, rows)
        write(rows, meta, args.out, tag)
    elif not args.scale:
        p.error("--no-figure5 leaves nothing to run without --scale")
    else:
        tag += "-scale"
    if args.scale:
        scale_up(xp, args.scale_n, 50, 10.0, args.scale_trials, rows)
        write(rows, meta, args.out, tag)
    print((args.out / f"robust-{tag}.md").read_text())


if __name__ == "__main__":
    main()
