"""The CuPy functions gpusketch calls exist in the installed CuPy and take the keywords passed.

CI has no CuPy, and the [fakegpu] cases run NumPy under CuPy's names, so a call
to a NumPy function that CuPy lacks (or a keyword CuPy does not take) would pass
there and fail only on a GPU.  This reads gpusketch's source and checks every
attribute chain on an array module against the real CuPy.  CuPy imports without
a device, so this runs wherever CuPy is installed; elsewhere it skips.
"""

import ast
import inspect
import pathlib

import pytest

cupy = pytest.importorskip("cupy")
cupyx_linalg = pytest.importorskip("cupyx.scipy.linalg")
cupyx_sparse = pytest.importorskip("cupyx.scipy.sparse")
cupyx_sparse_linalg = pytest.importorskip("cupyx.scipy.sparse.linalg")

import cupyx  # noqa: E402

import _fake_cupy  # noqa: E402

SOURCE = pathlib.Path(__file__).resolve().parents[1] / "gpusketch"

# What each name stands for on the GPU, as the code binds it: ``xp`` from
# array_namespace, ``la``/``dense_la`` and ``sparse_la`` from linalg_modules,
# ``sparse``/``sps`` from sparse_module.
ROOTS = {
    "xp": cupy,
    "cupy": cupy,
    "cp": cupy,
    "cupyx": cupyx,
    "la": cupyx_linalg,
    "_la": cupyx_linalg,
    "dense_la": cupyx_linalg,
    "sparse_la": cupyx_sparse_linalg,
    "sparse": cupyx_sparse,
    "sps": cupyx_sparse,
}


def _chain(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id] + parts[::-1] if isinstance(node, ast.Name) else None


def _resolve(chain):
    """The CuPy object a chain names, or the first missing name; attributes of
    a non-module, non-class object (an array's) are not checked."""
    obj = ROOTS[chain[0]]
    for name in chain[1:]:
        if not (inspect.ismodule(obj) or inspect.isclass(obj)):
            return obj, None
        if not hasattr(obj, name):
            return None, name
        obj = getattr(obj, name)
    return obj, None


def _uses():
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            target = node.func if isinstance(node, ast.Call) else node
            if not isinstance(target, ast.Attribute):
                continue
            chain = _chain(target)
            if chain and chain[0] in ROOTS:
                yield f"{path.relative_to(SOURCE.parent)}:{node.lineno}", chain, node


def test_every_array_module_attribute_exists_in_cupy():
    missing = sorted({f"{where} {'.'.join(c)} (no {name})" for where, c, _ in _uses() if (name := _resolve(c)[1])})
    assert not missing, missing
    assert len({tuple(c) for _, c, _ in _uses()}) > 50  # the walk found the calls


def test_keywords_passed_to_cupy_are_accepted():
    bad = []
    for where, chain, node in _uses():
        if not isinstance(node, ast.Call):
            continue
        kws = [k.arg for k in node.keywords if k.arg]
        obj, missing = _resolve(chain)
        if not kws or missing or obj is None:
            continue
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):  # Cython functions without a signature
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        bad += [f"{where} {'.'.join(chain)}({k}=)" for k in kws if k not in params]
    assert not bad, bad


def test_the_stand_in_offers_only_what_cupy_ndarray_has():
    assert _fake_cupy._NDARRAY_ATTRS <= set(dir(cupy.ndarray))
    assert not hasattr(cupy.ndarray, "__index__") and not hasattr(_fake_cupy.ndarray, "__index__")


def test_the_stand_ins_name_list_is_cupys():
    """``cupy_names.txt`` (what the stand-in may offer) names only what the installed CuPy has;
    on a mismatch the message holds the installed CuPy's lists, to paste into the file."""
    import importlib

    wrong, lists = [], []
    for module, names in _fake_cupy.CUPY_NAMES.items():
        real = {n for n in dir(importlib.import_module(module)) if not n.startswith("_")}
        wrong += [f"{module}.{n}" for n in sorted(names - real)]
        lists.append(f"[{module}]\n" + " ".join(sorted(real)))
    assert not wrong, (wrong, "\n\n".join(lists))
