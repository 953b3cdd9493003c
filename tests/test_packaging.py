"""Packaging: import hygiene, kernel sources in the wheel, CUDA sources compile with nvcc."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gpusketch import _kernels

ROOT = Path(__file__).resolve().parents[1]


def test_import_does_not_import_gpu_or_dask_stacks():
    code = (
        "import sys, gpusketch, gpusketch.operators;"
        "bad = [m for m in ('cupy', 'cupyx', 'torch', 'dask', 'nvtx') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_kernel_source_is_registered():
    names = {p.name for p in _kernels.kernel_dir().glob("*.cu")}
    assert names == set(_kernels.NAME_EXPRESSIONS)


def _can_build_offline():
    import importlib.util

    has = lambda mod: importlib.util.find_spec(mod) is not None  # noqa: E731
    return has("setuptools") and (has("wheel") or has("setuptools.command.bdist_wheel"))


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_wheel_ships_kernel_sources(tmp_path):
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)]
    if _can_build_offline():
        cmd.insert(4, "--no-build-isolation")  # offline machines: build with what is installed
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("gpusketch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for src in _kernels.NAME_EXPRESSIONS:
        assert f"gpusketch/kernels/{src}" in names
    assert "gpusketch/kernels/philox.cuh" in names
    for py in (ROOT / "gpusketch").rglob("*.py"):  # every subpackage is listed in pyproject
        assert py.relative_to(ROOT).as_posix() in names, py
    # The installed layout resolves its kernels without the source tree.
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = "from gpusketch import _kernels; print(_kernels.kernel_dir())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(target)})
    assert r.returncode == 0 and str(target) in r.stdout, r.stdout + r.stderr


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("source", sorted(_kernels.NAME_EXPRESSIONS))
def test_cuda_sources_compile_without_warnings(tmp_path, source):
    # Instantiate exactly the templates run time asks NVRTC for, for sm_80 and sm_90,
    # from the same inlined source that CuPy compiles.
    names = _kernels.NAME_EXPRESSIONS[source]
    unit = _kernels.kernel_sources(source)
    unit += "\nvoid *gs_instances[] = {" + ", ".join(f"(void *)&{n}" for n in names) + "};\n"
    cu = tmp_path / source
    cu.write_text(unit)
    cmd = [NVCC, "-std=c++17", "-Werror", "all-warnings", "-c", str(cu), "-o", str(tmp_path / "k.o"),
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


def _design_signatures():
    """DESIGN.md's public names: (callable, positional parameters, keyword-only defaults)."""
    import gpusketch as gs
    from gpusketch import fair, kron, robust

    return [
        (gs.CountSketch, ["m", "n"], {"seed": None}),
        (gs.SparseSign, ["m", "n"], {"nnz": 8, "seed": None}),
        (gs.Gaussian, ["m", "n"], {"seed": None}),
        (gs.SRHT, ["m", "n"], {"seed": None}),
        (gs.Sampling, ["indices", "n"], {"scale": None}),
        (gs.FastEmbedding, ["m", "n"], {"seed": None}),
        (gs.lstsq, ["A", "b"], {"method": "precondition", "m": None, "tol": 1e-10, "seed": None}),
        (gs.leverage_scores, ["A"], {"exact": False, "seed": None}),
        (gs.lewis_weights, ["A", "p"], {"seed": None}),
        (gs.lp_regression, ["A", "b", "p"], {"m": None, "seed": None}),
        (gs.rank, ["A"], {"seed": None}),
        (gs.independent_rows, ["A"], {"seed": None}),
        (gs.low_rank, ["A", "k"], {"eps": 0.1, "seed": None}),
        (gs.randomized_svd, ["A", "k"], {"oversample": 10, "power_iters": 2, "seed": None}),
        (kron.lstsq, ["factors", "b"], {"m": None, "seed": None}),
        (kron.lp_regression, ["factors", "b", "p"], {"m": None, "seed": None}),
        (kron.rank_regression, ["A", "b"], {"m": None, "seed": None}),
        (kron.low_rank, ["factors", "k"], {"m": None, "seed": None}),
        (robust.TukeyLoss, ["tau", "p"], {}),
        (robust.tukey_regression, ["A", "b", "tau"], {"method": "sampling", "rows": None, "seed": None}),
        (robust.heavy_coordinates, ["A", "alpha"], {"seed": None}),
        (robust.irls, ["A", "b", "loss"], {"weights": None, "x0": None}),
        (fair.cost, ["groups", "V"], {}),
        (fair.low_rank, ["groups", "k"], {"rank": None, "seed": None}),
        (fair.column_subset, ["groups", "k"], {"seed": None}),
        (fair.regression, ["groups", "targets"], {"norm": 2, "exact": True}),
    ]


def test_public_signatures_match_the_design():
    """The names, parameter order and defaults DESIGN.md promises (renaming one needs a written reason)."""
    import inspect

    for fn, positional, keywords in _design_signatures():
        params = inspect.signature(fn).parameters
        where = getattr(fn, "__qualname__", fn)
        head = [p.name for p in params.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
        assert head[: len(positional)] == positional, (where, head)
        for name, default in keywords.items():
            p = params[name]
            assert p.kind == p.KEYWORD_ONLY and p.default == default, (where, name, p)
    import gpusketch as gs
    from gpusketch import kron, robust

    for fn, p in [(robust.TukeyLoss, 2), (gs.lp_regression, 1), (kron.lp_regression, 1)]:
        assert inspect.signature(fn).parameters["p"].default == p, fn


def test_dask_functions_share_the_in_memory_defaults():
    import inspect

    pytest.importorskip("dask")
    import gpusketch as gs
    import gpusketch.dask as gsd

    for name in ("lstsq", "leverage_scores", "randomized_svd"):
        ours = inspect.signature(getattr(gsd, name)).parameters
        mem = inspect.signature(getattr(gs, name)).parameters
        shared = [k for k, p in mem.items() if p.kind == p.KEYWORD_ONLY and k in ours]
        assert len(shared) >= 2, name
        for k in shared:
            assert ours[k].default == mem[k].default, (name, k)
