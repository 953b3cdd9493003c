"""Sustained throughput of ``gpusketch.stream.sketch`` on an on-disk ``.npy`` matrix.

Usage::

    python bench/stream.py                        # 8 GB file, 12 passes (~100 GB-equivalent), best device
    python bench/stream.py --gb 1 --passes 3 --device cpu

Writes a float32 ``.npy`` file of ``--gb`` GB (``--dir``, default a temporary
directory on the local disk), then sketches it ``--passes`` times with a
CountSketch through ``stream.sketch`` (row chunks of ``--chunk-mb`` MB,
double-buffered host-to-device copies on the GPU) and reports GB/s per pass
and sustained over all passes.  After the first pass the file is served
from the page cache when it fits in RAM, so later passes measure the
memmap → pinned staging → device → kernel pipeline rather than the disk;
the table says which.  The file is deleted at the end.  Writes
``bench/results/stream-<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import git_commit, select_device, sync  # noqa: E402
from gpusketch import CountSketch, stream  # noqa: E402


def write_file(path, gb, d):
    n = int(gb * 1e9) // (4 * d)
    A = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(0)
    step = (256 << 20) // (4 * d)
    block = rng.standard_normal((step, d), dtype=np.float32)
    for a in range(0, n, step):
        b = min(n, a + step)
        A[a:b] = block[: b - a] * np.float32(1 + a % 7)
    A.flush()
    del A
    return n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--gb", type=float, default=8.0)
    p.add_argument("--passes", type=int, default=12)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--m", type=int, default=1024)
    p.add_argument("--chunk-mb", type=int, default=256)
    p.add_argument("--dir", default=None)
    p.add_argument("--commit", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    xp, device, use_gpu = select_device(args.device)
    tag = "gpu" if use_gpu else "cpu"
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "A.npy")
        t0 = time.perf_counter()
        n = write_file(path, args.gb, args.d)
        t_write = time.perf_counter() - t0
        nbytes = n * args.d * 4
        S = CountSketch(args.m, n, seed=1)
        chunk_rows = (args.chunk_mb << 20) // (4 * args.d)
        rows = []
        for k in range(args.passes):
            t0 = time.perf_counter()
            Y = stream.sketch(S, path, chunk_rows=chunk_rows, device="gpu" if use_gpu else "cpu", progress=False)
            sync(xp)
            t = time.perf_counter() - t0
            rows.append({"pass": k + 1, "seconds": t, "GB/s": nbytes / t / 1e9})
            print(rows[-1], flush=True)
        assert Y.shape == (args.m, args.d)
    total_t = sum(r["seconds"] for r in rows)
    meta = {"date": datetime.date.today().isoformat(), "commit": args.commit or git_commit(), "device": device,
            "file_GB": nbytes / 1e9, "rows": n, "d": args.d, "m": args.m, "chunk_MB": args.chunk_mb,
            "write_GB/s": nbytes / t_write / 1e9, "passes": args.passes,
            "streamed_GB": nbytes * args.passes / 1e9, "sustained_GB/s": nbytes * args.passes / total_t / 1e9}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"stream-{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# bench/stream.py — {meta['date']}, commit {meta['commit']}, {device}", "",
             f"CountSketch m = {args.m} of a {meta['file_GB']:.1f} GB float32 .npy ({n} × {args.d}), "
             f"chunks of {args.chunk_mb} MB; file written at {meta['write_GB/s']:.2f} GB/s.", "",
             "| pass | seconds | GB/s |", "|---:|---:|---:|"]
    lines += [f"| {r['pass']} | {r['seconds']:.3f} | {r['GB/s']:.2f} |" for r in rows]
    lines += ["", f"Sustained over {meta['streamed_GB']:.0f} GB streamed: **{meta['sustained_GB/s']:.2f} GB/s** "
              "(pass 1 reads a just-written file; later passes come from the page cache when the file fits in RAM)."]
    (args.out / f"stream-{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
