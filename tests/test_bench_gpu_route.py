"""Each bench script's GPU route runs end to end at toy sizes and writes its tables.

A GPU session is short and rare; a bench script that breaks on its device
branch (a host array where a device one is needed, a result that is not
synchronised, a table column that is missing) would spend it.  These run each
script's ``main`` with ``--device gpu`` in process, on CuPy where a GPU is and
on the NumPy-backed stand-in elsewhere, with the problem sizes shrunk.  They
check that the route runs and writes JSON and Markdown, not the figures: those
are the GPU tables' business.  Peers that need torch are skipped where torch
is missing, as the scripts do.
"""

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench(monkeypatch, cupy_or_fake):
    monkeypatch.syspath_prepend(str(BENCH))
    from gpusketch import _timing

    small_copy = _timing.copy_bandwidth

    def load(name):
        mod = importlib.import_module(name)
        if hasattr(mod, "copy_bandwidth"):  # 1 GiB copies, five times: the device's peak, not needed here
            monkeypatch.setattr(mod, "copy_bandwidth", lambda xp, nbytes=0, repeat=5: small_copy(xp, 1 << 20, 1))
        return mod

    return load


def _tables(out, stem):
    record = json.loads((out / f"{stem}.json").read_text())
    table = (out / f"{stem}.md").read_text()
    assert record and "|" in table
    return record, table


@pytest.mark.gpu
def test_linalg(bench, tmp_path, monkeypatch):
    mod = bench("linalg")
    monkeypatch.setattr(mod, "LSTSQ_QUICK", [(4096, 32)])
    monkeypatch.setattr(mod, "LOWRANK_QUICK", [(2000, 100, 5)])
    mod.main(["--device", "gpu", "--quick", "--repeat", "1", "--out", str(tmp_path), "--commit", "test"])
    _, table = _tables(tmp_path, "linalg-gpu-quick")
    assert "gpusketch precondition" in table and "randomized_svd" in table and "streamed" in table
    assert "block LSMR" in table and "one column at a time" in table


@pytest.mark.gpu
def test_operators(bench, tmp_path, monkeypatch):
    mod = bench("operators")
    monkeypatch.setattr(mod, "QUICK", [(1 << 12, 16, 64), (1 << 10, 64, 128)])
    mod.main(["--device", "gpu", "--quick", "--dtypes", "float32", "--repeat", "1", "--out", str(tmp_path),
              "--commit", "test"])
    _, table = _tables(tmp_path, "operators-gpu-quick")
    assert "CountSketch" in table and "SRHT" in table


@pytest.mark.gpu
def test_kron(bench, tmp_path, monkeypatch):
    mod = bench("kron")
    problem = mod.problem
    monkeypatch.setattr(mod, "problem", lambda xp, ns, ds, noise, seed=0: problem(
        xp, tuple(min(n, 60 if len(ns) == 2 else 20) for n in ns), tuple(min(d, 4) for d in ds), noise, seed))
    mod.main(["--device", "gpu", "--trials", "1", "--l1", "--scale", "--out", str(tmp_path), "--commit", "test"])
    record, _ = _tables(tmp_path, "kron-gpu")
    assert {r["table"] for r in record["rows"]} >= {"l2", "l2 sketch", "l1", "l2 scale q=2", "l2 scale q=3"}


@pytest.mark.gpu
def test_robust(bench, tmp_path, monkeypatch):
    mod = bench("robust")
    figure5 = mod.figure5
    monkeypatch.setattr(mod, "figure5", lambda xp, n, d, tau, trials, rows: figure5(xp, 1000, 5, tau, 1, rows))
    mod.main(["--device", "gpu", "--quick", "--out", str(tmp_path), "--commit", "test"])
    _tables(tmp_path, "robust-gpu-quick")
    pytest.importorskip("statsmodels")
    mod.main(["--device", "gpu", "--no-figure5", "--scale", "--scale-n", "5000", "--scale-trials", "1",
              "--out", str(tmp_path), "--commit", "test"])
    _, table = _tables(tmp_path, "robust-gpu-scale")
    assert "statsmodels" in table


@pytest.mark.gpu
def test_fair(bench, tmp_path):
    bench("fair").main(["--device", "gpu", "--trials", "1", "--trials-b", "1", "--out", str(tmp_path),
                        "--commit", "test"])
    _tables(tmp_path, "fair-gpu")


@pytest.mark.gpu
def test_stream(bench, tmp_path):
    bench("stream").main(["--device", "gpu", "--gb", "0.01", "--passes", "1", "--chunk-mb", "2",
                          "--dir", str(tmp_path), "--out", str(tmp_path), "--commit", "test"])
    _tables(tmp_path, "stream-gpu")


@pytest.mark.gpu
def test_distributed(bench, tmp_path):
    pytest.importorskip("dask")
    bench("distributed").main(["--device", "gpu", "--log2n", "13", "--d", "8", "--chunk-rows", "2048",
                               "--out", str(tmp_path), "--commit", "test"])
    _tables(tmp_path, "distributed-gpu")


@pytest.mark.gpu
def test_phases(bench, tmp_path, monkeypatch):
    mod = bench("phases")
    monkeypatch.setattr(mod, "LOW_RANK_QUICK", [(600, 120, 4)])
    monkeypatch.setattr(mod, "LSTSQ_QUICK", (2048, 16))
    monkeypatch.setattr(mod, "RANK_QUICK", [(300, 40, 40)])
    mod.main(["--device", "gpu", "--quick", "--out", str(tmp_path), "--commit", "test"])
    record, table = _tables(tmp_path, "phases-gpu-quick")
    assert [c["call"].split()[0] for c in record["calls"]] == [
        "low_rank", "randomized_svd", "lstsq", "rank", "independent_rows"]
    assert "low_rank._constant_factor_subspace" in table and "lstsq._warm_start" in table and "kernel " in table
    assert "rank.matrix_rank" in table and "rank._lu_rows" in table
    from gpusketch import _kernels
    from gpusketch.linalg import svd

    # the timers are gone afterwards
    assert sys.modules["gpusketch.linalg.low_rank"].randomized_svd is svd.randomized_svd
    assert _kernels.call.__module__ == "gpusketch._kernels"
