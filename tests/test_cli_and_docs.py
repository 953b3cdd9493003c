"""The gpusketch command (through subprocess) and the docstring examples."""

import doctest
import importlib
import pkgutil
import subprocess
import sys

import numpy as np
import pytest

import gpusketch
import gpusketch as gs


def run(*args):
    return subprocess.run([sys.executable, "-m", "gpusketch", *args], capture_output=True, text=True, timeout=300)


def test_info():
    r = run("info")
    assert r.returncode == 0, r.stderr
    assert "gpusketch" in r.stdout and "numpy" in r.stdout


def _check_demo_tables(stdout, device):
    """Both demo tables have every row for ``device`` (and none for another), with quality in bounds."""
    for name in ("CountSketch", "SparseSign(8)", "SRHT", "Gaussian", "Sampling(unif)"):
        assert name in stdout
    firsts = [line.split()[0] for line in stdout.splitlines() if line.strip()]
    assert not any(f in ("cpu", "gpu") and f != device for f in firsts)
    # Every operator's sketch-and-solve residual is within 50 % of optimal at m = 24 d.
    sketch_table, solver_table = stdout.split("\n\n")
    ratios = [float(line.split()[-1]) for line in sketch_table.splitlines() if line.startswith(device + " ")]
    assert len(ratios) == 5 and all(1.0 <= q < 1.5 for q in ratios)
    solvers = [line for line in solver_table.splitlines() if line.startswith(device + " ")]
    assert len(solvers) == 9
    for line in solvers:
        q = float(line.split()[-1])
        if "precondition" in line:  # matches the exact cost
            assert abs(q) < 1e-8, line
        elif "kron.lstsq" in line:  # m = 4000 samples for D = 64 unknowns: within 2 %
            assert 0 <= q < 0.02, line
        elif "fair.low_rank" in line:  # the optimum is 0.709 of the SVD baseline
            assert 0.70 < q < 0.72, line
        elif "fair.regression" in line:  # min-max never loses to the pooled fit
            assert 0.5 < q <= 1.0 + 1e-9, line
        else:  # the others are within 50 % of their reference
            assert 0.99 <= q < 1.5, line


def test_demo_small_prints_table():
    r = run("demo", "--n", "3000", "--d", "5", "--m", "120", "--repeat", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    _check_demo_tables(r.stdout, "cpu")


def test_demo_with_fewer_than_8_sketch_rows():
    # SparseSign's nnz was fixed at 8, so --m below 8 ended in "nnz must be <= m"
    r = run("demo", "--n", "400", "--d", "2", "--m", "6", "--repeat", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "SparseSign(6)" in r.stdout


@pytest.mark.parametrize("args", [("demo", "--m", "0"), ("demo", "--n", "10", "--m", "20"), ("demo", "--seed", "-1"),
                                  ("nosuch",), ()])
def test_bad_arguments_exit_2(args):
    r = run(*args)
    assert r.returncode == 2
    assert "usage" in r.stderr.lower()


def _modules():
    for info in pkgutil.walk_packages(gpusketch.__path__, "gpusketch."):
        if info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


@pytest.mark.parametrize("module", list(_modules()), ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_readme_python_examples_run():
    import re
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not beside the tests")
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    code = "\n".join(b for b in blocks if "cupy" not in b)  # GPU snippets need a device
    assert "gs.lstsq" in code
    exec(compile(code, "README.md", "exec"), {})


def test_sketch_and_lstsq_commands(tmp_path):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3000, 5))
    b = A @ np.arange(1.0, 6.0) + 0.01 * rng.standard_normal(3000)
    np.save(tmp_path / "A.npy", A)
    np.save(tmp_path / "b.npy", b)
    r = run("sketch", str(tmp_path / "A.npy"), "-m", "64", "--kind", "sparse_sign", "--seed", "7",
            "--chunk-rows", "1000", "--quiet", "--device", "cpu", "-o", str(tmp_path / "SA.npy"))
    assert r.returncode == 0, r.stderr
    SA = np.load(tmp_path / "SA.npy")
    np.testing.assert_allclose(SA, gs.operators.make_sketch("sparse_sign", 64, 3000, seed=7) @ A, atol=1e-10)
    r = run("sketch", str(tmp_path / "b.npy"), "-m", "64", "--seed", "7", "--chunk-rows", "700", "--quiet",
            "--device", "cpu", "-o", str(tmp_path / "Sb.npy"))
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "Sb.npy"), gs.CountSketch(64, 3000, seed=7) @ b, atol=1e-10)
    r = run("lstsq", str(tmp_path / "A.npy"), str(tmp_path / "b.npy"), "--seed", "1", "--device", "cpu",
            "-o", str(tmp_path / "x.npy"))
    assert r.returncode == 0, r.stderr
    assert "iterations=0, preconditioner=refined, m=" in r.stdout
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), np.linalg.lstsq(A, b, rcond=None)[0], atol=1e-9)


def test_sketch_and_lstsq_commands_read_scipy_sparse_npz(tmp_path):
    """A matrix saved by scipy.sparse.save_npz (CSC here) is read as CSR: the sketch equals S @ A,
    the solve the dense optimum, on every method; a plain np.savez archive is refused by name."""
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    A = sp.random(3000, 6, density=0.2, random_state=2, data_rvs=rng.standard_normal) + sp.eye(3000, 6)
    b = A @ np.arange(1.0, 7.0) + 0.01 * rng.standard_normal(3000)
    sp.save_npz(tmp_path / "A.npz", A.tocsc())
    np.save(tmp_path / "b.npy", b)
    r = run("sketch", str(tmp_path / "A.npz"), "-m", "64", "--kind", "sparse_sign", "--seed", "7",
            "--chunk-rows", "700", "--quiet", "--device", "cpu", "-o", str(tmp_path / "SA.npy"))
    assert r.returncode == 0, r.stderr
    S = gs.operators.make_sketch("sparse_sign", 64, 3000, seed=7)
    np.testing.assert_allclose(np.load(tmp_path / "SA.npy"), S @ A.toarray(), atol=1e-10)
    x_opt = np.linalg.lstsq(A.toarray(), b, rcond=None)[0]
    for method in ("precondition", "direct"):
        r = run("lstsq", str(tmp_path / "A.npz"), str(tmp_path / "b.npy"), "--seed", "1", "--method", method,
                "--device", "cpu", "-o", str(tmp_path / "x.npy"))
        assert r.returncode == 0, r.stderr
        np.testing.assert_allclose(np.load(tmp_path / "x.npy"), x_opt, atol=1e-9)
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    r = run("lstsq", str(tmp_path / "plain.npz"), str(tmp_path / "b.npy"), "-o", str(tmp_path / "x.npy"))
    assert r.returncode == 1 and "plain.npz is not a .npy array file or a scipy.sparse.save_npz matrix " \
        "(found an .npz archive of a)" in r.stderr
    r = run("lstsq", str(tmp_path / "A.npz"), str(tmp_path / "A.npz"),
            "-o", str(tmp_path / "x.npy"))
    assert r.returncode == 1 and "A.npz is not a .npy array file (found an .npz archive of data, format" in r.stderr
    sp.save_npz(tmp_path / "E.npz", sp.csr_matrix((0, 4)))
    r = run("sketch", str(tmp_path / "E.npz"), "-m", "4", "-o", str(tmp_path / "o.npy"), "--device", "cpu")
    assert r.returncode == 1 and "empty sparse matrix of shape (0, 4)" in r.stderr


def test_command_errors(tmp_path):
    r = run("sketch", str(tmp_path / "missing.npy"), "-m", "4", "-o", str(tmp_path / "o.npy"))
    assert r.returncode == 2 and "not found" in r.stderr
    np.save(tmp_path / "v.npy", np.ones(10))
    np.save(tmp_path / "t.npy", np.ones((10, 2, 2)))
    r = run("sketch", str(tmp_path / "t.npy"), "-m", "4", "-o", str(tmp_path / "o.npy"), "--device", "cpu")
    assert r.returncode == 1 and "3-D array; a vector or a 2-D matrix" in r.stderr
    (tmp_path / "junk.npy").write_text("not an array")
    r = run("lstsq", str(tmp_path / "junk.npy"), str(tmp_path / "v.npy"), "-o", str(tmp_path / "x.npy"))
    assert r.returncode == 1 and "junk.npy is not a .npy array file (no .npy header)" in r.stderr
    np.save(tmp_path / "e.npy", np.zeros((0, 3)))
    r = run("sketch", str(tmp_path / "e.npy"), "-m", "4", "-o", str(tmp_path / "o.npy"), "--device", "cpu")
    assert r.returncode == 1 and "empty array of shape (0, 3)" in r.stderr
    np.save(tmp_path / "A.npy", np.ones((10, 2)) + np.eye(10, 2))
    r = run("lstsq", str(tmp_path / "A.npy"), str(tmp_path / "v.npy"), "-o", str(tmp_path / "x.npy"),
            "--device", "cpu", "--method", "direct")
    assert r.returncode == 0
    np.save(tmp_path / "b9.npy", np.ones(9))
    r = run("lstsq", str(tmp_path / "A.npy"), str(tmp_path / "b9.npy"), "-o", str(tmp_path / "x.npy"), "--device", "cpu")
    assert r.returncode == 1 and "rows" in r.stderr
    missing = tmp_path / "no_such_folder" / "x.npy"  # refused before the solve, not after it
    r = run("lstsq", str(tmp_path / "A.npy"), str(tmp_path / "v.npy"), "-o", str(missing), "--device", "cpu")
    assert r.returncode == 2 and f"--output: folder not found: {missing.parent}" in r.stderr
    before = (tmp_path / "A.npy").read_bytes()  # an output that is an input is refused, and both stay
    for args in (("sketch", str(tmp_path / "A.npy"), "-m", "4", "--quiet"),
                 ("lstsq", str(tmp_path / "A.npy"), str(tmp_path / "v.npy"), "--method", "direct")):
        r = run(*args, "-o", str(tmp_path / "." / "A.npy"), "--device", "cpu")
        assert r.returncode == 2 and "is the input" in r.stderr and (tmp_path / "A.npy").read_bytes() == before
    # The file named is the file written, whatever its suffix (np.save(path) appends ".npy":
    # "-o A" wrote A.npy, the memory-mapped input, and "-o out.txt" wrote out.txt.npy); a folder
    # is refused rather than written as folder.npy beside it.
    r = run("sketch", str(tmp_path / "A.npy"), "-m", "4", "--quiet", "-o", str(tmp_path / "A"), "--device", "cpu")
    assert r.returncode == 0 and (tmp_path / "A.npy").read_bytes() == before
    assert np.load(tmp_path / "A").shape == (4, 2) and f"-> {tmp_path / 'A'} (4, 2)" in r.stdout
    (tmp_path / "out").mkdir()
    r = run("lstsq", str(tmp_path / "A.npy"), str(tmp_path / "v.npy"), "-o", str(tmp_path / "out"), "--device", "cpu")
    assert r.returncode == 2 and "is a folder" in r.stderr and not (tmp_path / "out.npy").exists()
    np.save(tmp_path / "c.npy", np.ones((10, 2), dtype=np.complex128))
    r = run("sketch", str(tmp_path / "c.npy"), "-m", "4", "-o", str(tmp_path / "o.npy"), "--device", "cpu")
    assert r.returncode == 1 and "c.npy has complex dtype" in r.stderr  # named by its file


def test_bench_quick_writes_tables(tmp_path):
    r = run("bench", "--quick", "--only", "kron", "--device", "cpu", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "kron-cpu.md").read_text()
    assert "| l2 | 90000 | 8100 |" in table
    bad = run("bench", "--only", "nope")
    assert bad.returncode == 2 and "unknown suite" in bad.stderr


def test_warnings_print_as_command_output(tmp_path, capsys):
    """A warning reads as the command's own line, not as a pointer into gpusketch's source."""
    from gpusketch.cli import main

    np.save(tmp_path / "A.npy", np.ones((3, 5)))
    np.save(tmp_path / "b.npy", np.ones(3))
    assert main(["lstsq", str(tmp_path / "A.npy"), str(tmp_path / "b.npy"), "--method", "direct",
                 "--device", "cpu", "-o", str(tmp_path / "x.npy")]) == 0
    err = capsys.readouterr().err
    assert "gpusketch lstsq: warning: A of shape (3, 5) is numerically rank deficient" in err
    assert "res = lstsq(" not in err


@pytest.mark.gpu
def test_commands_on_the_gpu_route(tmp_path, capsys, cupy_or_fake):
    """demo, sketch and lstsq with --device gpu, in process: on CuPy where a GPU is,
    else on the stand-in (the commands' device branches, not the kernels' speed)."""
    from gpusketch import _kernels, cli

    assert cli.main(["info"]) == 0
    info = capsys.readouterr().out
    assert "device" in info and info.count(" compiled") == len(_kernels.NAME_EXPRESSIONS), info
    assert cli.main(["demo", "--n", "3000", "--d", "5", "--m", "120", "--repeat", "1", "--device", "gpu"]) == 0
    _check_demo_tables(capsys.readouterr().out, "gpu")
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3000, 5))
    b = A @ np.arange(1.0, 6.0) + 0.01 * rng.standard_normal(3000)
    np.save(tmp_path / "A.npy", A)
    np.save(tmp_path / "b.npy", b)
    assert cli.main(["sketch", str(tmp_path / "A.npy"), "-m", "64", "--kind", "sparse_sign", "--seed", "7",
                     "--chunk-rows", "1000", "--quiet", "--device", "gpu", "-o", str(tmp_path / "SA.npy")]) == 0
    S = gs.operators.make_sketch("sparse_sign", 64, 3000, seed=7)
    np.testing.assert_allclose(np.load(tmp_path / "SA.npy"), S @ A, atol=1e-10)
    x_opt = np.linalg.lstsq(A, b, rcond=None)[0]
    import scipy.sparse as sp

    sp.save_npz(tmp_path / "A.npz", sp.csr_matrix(A))  # a sparse file goes to the device as cupyx CSR
    assert cli.main(["sketch", str(tmp_path / "A.npz"), "-m", "64", "--kind", "sparse_sign", "--seed", "7",
                     "--chunk-rows", "1000", "--quiet", "--device", "gpu", "-o", str(tmp_path / "SA.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "SA.npy"), S @ A, atol=1e-10)
    for method in ("precondition", "direct"):
        for a_file in ("A.npy", "A.npz"):
            assert cli.main(["lstsq", str(tmp_path / a_file), str(tmp_path / "b.npy"), "--seed", "1", "--method",
                             method, "--device", "gpu", "-o", str(tmp_path / "x.npy")]) == 0
            np.testing.assert_allclose(np.load(tmp_path / "x.npy"), x_opt, atol=1e-9)
