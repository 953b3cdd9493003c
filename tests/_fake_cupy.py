"""A NumPy-backed stand-in for CuPy, so that CI (no GPU) runs the GPU code paths.

gpusketch branches between host and device in two kinds of places: the kernel
registry (``_kernels.call``) and the algorithms' own ``xp is np`` choices (one
block instead of row blocks, cuSOLVER routes, device-side sampling).  The
second kind is ordinary Python that CI would otherwise never execute.  This
module installs modules named ``cupy``, ``cupyx.scipy.linalg``,
``cupyx.scipy.sparse`` and ``cupyx.scipy.sparse.linalg`` whose arrays are
NumPy arrays in a wrapper that behaves like ``cupy.ndarray`` where it matters
for those paths:

- implicit conversion to NumPy raises ``TypeError`` (``np.asarray(x)``, or
  SciPy handed a device array); only ``.get()`` and ``cupy.asnumpy`` copy to
  the host (``float``, ``int`` and ``bool`` of a 1-element array work, as in
  CuPy, with a synchronisation there);
- mixing a host array with a device array in an operation raises
  ``TypeError``, as CuPy does;
- reductions return 0-d device arrays, not NumPy scalars, and there is no
  ``__index__`` (CuPy has none);
- only CuPy 14.2's public names are offered (``cupy_names.txt``), both as
  ``cupy.f`` and as ``np.f(device_array)``, and only cupy.ndarray's attributes;
- ``cholesky``, ``solve``, ``inv`` and ``solve_triangular`` do not raise on a
  failed factorisation, as CuPy's do not by default: the result is NaN;
- the kernel registry's ``"cupy"`` twins run their own Python (argument
  preparation, grids, sorting, temporaries) with a ``RawModule`` that compiles
  nothing: each launch is checked against the kernel's C signature, parsed
  from the shipped ``.cu`` source (``tests/test_kernel_launches.py``), then
  carried out as the CUDA source says it computes (``_EMULATED``: grid-stride
  loops as whole-range NumPy, with the CPU twins' hash and Gaussian
  functions, reads bounds-checked, the tiled kernels' grids checked for
  coverage).  So each CuPy twin computes for real and its result must agree
  with the NumPy twin's, which is the one returned: the glue's values
  (strides, offsets, seeds, scales, grids) are checked, not only their types.

What it cannot check: the CUDA code itself (the emulators are a reading of
it, a desk check, not a GPU run: atomics, shuffles, shared memory and
synchronisation are not modelled), cuBLAS/cuSOLVER numerics,
streams and asynchrony, allocation failures (``memGetInfo`` reports
``DEVICE_FREE_BYTES``, nothing is refused), or where a CuPy function's
signature or semantics differ from NumPy's (``tests/test_cupy_api.py`` checks
names and keywords against a real CuPy wherever one is installed: it imports
without a device).  It is a test of the dispatch and of the algorithms' device
branches, not of a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import operator
import re
import sys
import types

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")  # CuPy's words
# Functions that take host data on purpose (explicit transfers and constructors).
_HOST_OK = {"asarray", "array", "asnumpy", "asfortranarray", "ascontiguousarray", "get_array_module", "dtype",
            "result_type", "can_cast", "promote_types", "iinfo", "finfo"}


# The public attributes of cupy.ndarray (CuPy 14.2); NumPy's others (ctypes,
# resize, ...) are absent there, and ``data`` is a device pointer, not a buffer.
_NDARRAY_ATTRS = frozenset(
    "T all any argmax argmin argpartition argsort astype base byteswap choose clip compress conj "
    "conjugate copy cumprod cumsum diagonal dot dtype dump dumps fill flags flat flatten get imag "
    "item itemsize max mean min nbytes ndim nonzero partition prod ptp put ravel real repeat reshape "
    "round searchsorted shape size sort squeeze std strides sum swapaxes take tobytes tofile tolist "
    "trace transpose var view".split()
)


def _cupy_names():
    """``{module: names}`` of CuPy 14.2's public API, from ``cupy_names.txt``."""
    names, module = {}, None
    with open(__file__.rsplit("/", 1)[0] + "/cupy_names.txt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                module = line[1:-1]
                names[module] = set()
            elif line and not line.startswith("#"):
                names[module].update(line.split())
    return names


CUPY_NAMES = _cupy_names()


def _mixing(x):
    return TypeError(f"Unsupported type {type(x)} (a host array in a device operation)")


def _unwrap(x, host_ok=False):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _Sparse):
        return x._m
    if isinstance(x, list):
        return [_unwrap(v, host_ok) for v in x]
    if isinstance(x, tuple) and type(x) is tuple:
        return tuple(_unwrap(v, host_ok) for v in x)
    if isinstance(x, np.ndarray) and x.ndim > 0 and not host_ok:
        raise _mixing(x)
    if scipy.sparse.issparse(x) and not host_ok:
        raise _mixing(x)
    return x


def _wrap(x, originals=None):
    """Device wrappers for the host results of a call; a result that is one of the
    call's own inputs comes back as that input's wrapper (``astype(copy=False)``,
    ``ascontiguousarray`` and the like return their argument in CuPy too)."""
    if originals and id(x) in originals and originals[id(x)][0] is x:
        return originals[id(x)][1]
    if isinstance(x, np.matrix):
        return ndarray(np.asarray(x))
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, np.generic) and not isinstance(x, (np.str_, np.bytes_)):
        return ndarray(np.asarray(x))
    if scipy.sparse.issparse(x):
        return _sparse_wrap(x)
    if isinstance(x, list):
        return [_wrap(v, originals) for v in x]
    if isinstance(x, tuple) and type(x) is tuple:
        return tuple(_wrap(v, originals) for v in x)
    if hasattr(x, "_fields") and isinstance(x, tuple):  # namedtuple results of linalg (QR, SVD, EighResult)
        return type(x)(*(_wrap(v, originals) for v in x))
    return x


def _originals(*wrappers):
    out = {}
    for w in wrappers:
        if isinstance(w, ndarray):
            out[id(w._a)] = (w._a, w)
        elif isinstance(w, _Sparse):
            out[id(w._m)] = (w._m, w)
        elif isinstance(w, (list, tuple)):
            out.update(_originals(*w))
    return out


def _device_fn(fn, host_ok=False, owner=None):
    """``fn`` on unwrapped data, its results wrapped; ``owner`` is the wrapper
    whose bound method ``fn`` is (so a method returning its array returns it)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        originals = _originals(owner, *args, *kwargs.values())
        args = [_unwrap(a, host_ok) for a in args]
        kwargs = {k: _unwrap(v, host_ok) for k, v in kwargs.items()}
        return _wrap(fn(*args, **kwargs), originals)

    return run


class _Device:
    id = 0

    def __init__(self, device=None):
        pass

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, _Device)

    def __hash__(self):
        return 0


class ndarray:
    """A host array dressed as a device array (see the module docstring)."""

    __array_priority__ = 100

    def __init__(self, a):
        self._a = a

    # --- what marks a CuPy array ---------------------------------------
    @property
    def __cuda_array_interface__(self):
        return {"shape": self._a.shape, "typestr": self._a.dtype.str, "data": (self._a.ctypes.data, False),
                "version": 3}

    @property
    def device(self):
        return _Device()

    def __array__(self, *args, **kwargs):
        raise TypeError(_IMPLICIT)

    def get(self, stream=None, order="C", out=None):
        return np.array(self._a, order=order)

    # --- NumPy's protocols: CuPy answers np.f(x) with cupy.f(x) -------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = [_unwrap(x) for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(o) for o in kwargs["out"])
        return _wrap(getattr(ufunc, method)(*inputs, **kwargs))

    def __array_function__(self, func, types_, args, kwargs):
        module = "cupy" + func.__module__[len("numpy"):] if func.__module__.startswith("numpy") else None
        if module not in CUPY_NAMES or func.__name__ not in CUPY_NAMES[module]:
            return NotImplemented  # CuPy has no such function: NumPy then raises TypeError
        return _device_fn(func)(*args, **kwargs)

    # --- attributes and methods ----------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    real = property(lambda self: ndarray(self._a.real))
    base = property(lambda self: None if self._a.base is None else ndarray(self._a.base))

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self._a.ctypes.data, device_id=0)

    def __getattr__(self, name):
        if name not in _NDARRAY_ATTRS:
            raise AttributeError(f"'cupy.ndarray' object has no attribute '{name}'")
        attr = getattr(self._a, name)
        return _device_fn(attr, owner=self) if callable(attr) else _wrap(attr)

    def repeat(self, repeats, axis=None):
        return _repeat(self, repeats, axis)

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray(np.asarray(v)) if not isinstance(v, np.ndarray) else ndarray(v) for v in self._a)

    def __repr__(self):
        return "fake_cupy." + repr(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __complex__(self):
        return complex(self._a)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, host_ok=True)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key, host_ok=True)] = _unwrap(value, host_ok=True)

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    def __reduce__(self):  # CuPy arrays pickle (through the host)
        return _restore, (self._a,)


def _restore(a):
    return ndarray(a)


def _repeat(a, repeats, axis=None):
    # CuPy's repeat takes an int, list or tuple: "cupy.ndarray cannot be specified as `repeats`".
    if isinstance(repeats, ndarray):
        raise ValueError("cupy.ndarray cannot be specified as `repeats` argument.")
    return ndarray(np.repeat(_unwrap(a), repeats, axis))


def _binary(op, reflected=False, inplace=False):
    def method(self, other):
        # CuPy defers to an operand of higher __array_priority__ (sketches, KroneckerMatrix, sparse).
        if not isinstance(other, ndarray) and getattr(other, "__array_priority__", 0) > self.__array_priority__:
            return NotImplemented
        o = _unwrap(other)
        if inplace:
            self._a = op(self._a, o)
            return self
        return _wrap(op(o, self._a) if reflected else op(self._a, o))

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift",
              "rshift"):
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    setattr(ndarray, f"__{_name}__", _binary(_op))
    setattr(ndarray, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(ndarray, f"__i{_name}__", _binary(getattr(operator, f"i{_name}"), inplace=True))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _binary(getattr(operator, _name)))
ndarray.__hash__ = None
ndarray.__neg__ = lambda self: ndarray(-self._a)
ndarray.__pos__ = lambda self: ndarray(+self._a)
ndarray.__abs__ = lambda self: ndarray(abs(self._a))
ndarray.__invert__ = lambda self: ndarray(~self._a)
ndarray.__module__ = "cupy"


# ---------------------------------------------------------------------------
# Sparse matrices (cupyx.scipy.sparse)
# ---------------------------------------------------------------------------


class _Sparse:
    _scipy = None
    __array_priority__ = 101

    def __init__(self, arg1, shape=None, dtype=None, copy=False):
        if isinstance(arg1, _Sparse):
            arg1 = arg1._m
        elif isinstance(arg1, ndarray):
            arg1 = arg1._a
        elif isinstance(arg1, tuple):
            arg1 = _unwrap(arg1)
            if len(arg1) == 2 and isinstance(arg1[1], tuple):
                arg1 = (arg1[0], tuple(arg1[1]))
        elif isinstance(arg1, np.ndarray):
            raise _mixing(arg1)
        self._m = type(self)._scipy(arg1, shape=shape, dtype=dtype, copy=copy)

    @classmethod
    def _from(cls, m):
        obj = cls.__new__(cls)
        obj._m = m
        return obj

    shape = property(lambda self: self._m.shape)
    dtype = property(lambda self: self._m.dtype)
    ndim = property(lambda self: 2)
    nnz = property(lambda self: self._m.nnz)
    format = property(lambda self: self._m.format)
    data = property(lambda self: ndarray(self._m.data))
    indices = property(lambda self: ndarray(self._m.indices))
    indptr = property(lambda self: ndarray(self._m.indptr))
    row = property(lambda self: ndarray(self._m.row))
    col = property(lambda self: ndarray(self._m.col))
    T = property(lambda self: _sparse_wrap(self._m.T))

    def get(self, stream=None):
        return self._m.copy()

    def toarray(self, order=None):
        return ndarray(self._m.toarray(order=order))

    def __array__(self, *args, **kwargs):
        raise TypeError(_IMPLICIT)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._m, name)
        return _device_fn(attr, owner=self) if callable(attr) else _wrap(attr)

    def __getitem__(self, key):
        return _wrap(self._m[_unwrap(key, host_ok=True)])

    def __matmul__(self, other):
        return _wrap(self._m @ _unwrap(other))

    def __rmatmul__(self, other):
        return _wrap(_unwrap(other) @ self._m)

    def __mul__(self, other):
        return _wrap(self._m * _unwrap(other))

    __rmul__ = __mul__

    def __truediv__(self, other):
        return _wrap(self._m / _unwrap(other))

    def __add__(self, other):
        return _wrap(self._m + _unwrap(other))

    __radd__ = __add__

    def __sub__(self, other):
        return _wrap(self._m - _unwrap(other))

    def __neg__(self):
        return _wrap(-self._m)

    def __repr__(self):
        return "fake_cupyx." + repr(self._m)


def _sparse_class(fmt):
    cls = type(f"{fmt}_matrix", (_Sparse,), {"_scipy": getattr(scipy.sparse, f"{fmt}_matrix")})
    cls.__module__ = f"cupyx.scipy.sparse._{fmt}"
    return cls


csr_matrix, csc_matrix, coo_matrix = (_sparse_class(f) for f in ("csr", "csc", "coo"))
_SPARSE = {"csr": csr_matrix, "csc": csc_matrix, "coo": coo_matrix}


def _sparse_wrap(m):
    fmt = m.format if m.format in _SPARSE else "csr"
    if m.format != fmt:
        m = m.tocsr()
    if not isinstance(m, scipy.sparse.spmatrix):  # sparse arrays -> matrices, as cupyx has only matrices
        m = getattr(scipy.sparse, f"{fmt}_matrix")(m)
    return _SPARSE[fmt]._from(m)


# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------


class _Ufunc:
    def __init__(self, uf):
        self._uf = uf

    def __call__(self, *args, **kwargs):
        return _device_fn(self._uf)(*args, **kwargs)

    def __getattr__(self, name):
        attr = getattr(self._uf, name)
        return _device_fn(attr) if callable(attr) else attr


def _silent(fn):
    """A factorisation or solve as CuPy runs it: its failure is not raised (CuPy checks
    cuSOLVER's info only under ``cupyx.errstate(linalg="raise")``, off by default) but
    shows as NaN in the result, which callers must test for themselves."""

    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
            a = args[-1] if fn.__name__ in ("solve", "solve_triangular") else args[0]
            return np.full(np.shape(a), np.nan, dtype=np.result_type(*[np.asarray(x).dtype for x in args[:2]], 1.0))

    return _device_fn(functools.wraps(fn)(run))


def _namespace(name, source, extra=None):
    """A module whose functions are ``source``'s, run on unwrapped data."""
    mod = types.ModuleType(name)
    extra = dict(extra or {})

    def getattr_(attr):
        if attr in extra:
            return extra[attr]
        if name in CUPY_NAMES and attr not in CUPY_NAMES[name]:
            raise AttributeError(f"module '{name}' has no attribute '{attr}' (CuPy 14.2 has none)")
        if not hasattr(source, attr):
            raise AttributeError(f"the CuPy stand-in (tests/_fake_cupy.py) has no {name}.{attr}: "
                                 f"give it one there if CuPy has it")
        obj = getattr(source, attr)
        if isinstance(obj, np.ufunc):
            return _Ufunc(obj)
        if isinstance(obj, type) or isinstance(obj, types.ModuleType) or not callable(obj):
            return obj  # dtypes (cupy.float64 is numpy.float64), constants
        return _device_fn(obj, host_ok=attr in _HOST_OK)

    mod.__getattr__ = getattr_
    return mod


def _asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        if (dtype is None or a.dtype == dtype) and order in (None, "K", "A"):
            return a
        return ndarray(np.asarray(a._a, dtype=dtype, order=order))
    if scipy.sparse.issparse(a):
        raise TypeError("cupy.asarray of a SciPy sparse matrix")
    return ndarray(np.array(_unwrap(a, host_ok=True), dtype=dtype, order=order or "K", copy=True))


def _array(a, dtype=None, copy=True, order="K", ndmin=0):
    return ndarray(np.array(_unwrap(a, host_ok=True), dtype=dtype, copy=True, order=order, ndmin=ndmin))


def _asnumpy(a, stream=None, order="C", out=None):
    return a.get() if isinstance(a, (ndarray, _Sparse)) else np.asarray(a)


def _get_array_module(*args):
    return sys.modules["cupy"] if any(isinstance(a, (ndarray, _Sparse)) for a in args) else np


class _Stream:
    def __init__(self, null=False, non_blocking=False, ptds=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def record(self, event=None):
        return object()

    def wait_event(self, event):
        pass

    def synchronize(self):
        pass


class _MemoryPool:
    def free_bytes(self):
        return 0

    def used_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


_MEMORY_POOL = _MemoryPool()
# What memGetInfo reports free; tests lower it to drive the routes that size
# their work by the device's free memory.
DEVICE_FREE_BYTES = 64 << 30


def _runtime():
    rt = types.ModuleType("cupy.cuda.runtime")
    rt.getDeviceCount = lambda: 1
    rt.memGetInfo = lambda: (DEVICE_FREE_BYTES, 80 << 30)
    rt.getDeviceProperties = lambda device: {"name": b"fake", "multiProcessorCount": 132,
                                             "totalGlobalMem": 80 << 30, "major": 9, "minor": 0}
    rt.deviceSynchronize = lambda: None
    rt.CUDARuntimeError = RuntimeError
    return rt


# ---------------------------------------------------------------------------
# Kernel launches: checked against the CUDA signatures, not run
# ---------------------------------------------------------------------------

_C_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64,
            "unsigned int": np.uint32, "signed char": np.int8, "unsigned char": np.uint8, "bool": np.bool_}
_MAX_SHARED_BYTES = 227 << 10  # per block, with opt-in, on sm_90
#: Every launch the stand-in has checked: ``(name expression, grid, block)``.
LAUNCHES = []
#: Kernel operations whose CuPy twin computed for real (its launches carried out) and was
#: compared with the NumPy twin: ``{name: times}``.
TWINS_COMPARED = {}


def _signatures(code):
    """``{kernel: (template parameters, [(is_pointer, C type)])}`` of the ``__global__`` functions."""
    out = {}
    for m in re.finditer(r"(?:template\s*<([^>]*)>\s*)?__global__\s+void\s+(\w+)\s*\(([^)]*)\)", code):
        tparams = [t.split()[-1] for t in m.group(1).split(",")] if m.group(1) else []
        params = []
        for p in m.group(3).split(","):
            p = p.replace("__restrict__", " ").replace("const", " ")
            params.append(("*" in p, " ".join(p.replace("*", " ").split()[:-1])))
        out[m.group(2)] = (tparams, params)
    return out


def _emulate_hash_values(col0, n, m, nnz, k0, k1, stream, buckets, signs):
    b, sg = _hashes(col0, n, m, nnz, k0, k1, stream)
    buckets._a[...] = b.reshape(buckets.shape)
    signs._a[...] = sg.reshape(signs.shape)


def _emulate_philox_blocks(ctr, k0, k1, count, out):
    from gpusketch import _random

    out._a[...] = _random.philox4x32(ctr._a, (int(k0), int(k1))).reshape(out.shape)


def _strided(A, rows, cols, s0, s1):
    """The (rows, cols) elements a kernel reads at ``A[i*s0 + c*s1]``, refused when any
    lies outside A's own memory (a wrong stride would read another array, or fault)."""
    a, item = A._a, A._a.itemsize
    lo, hi = getattr(np.lib, "array_utils", np).byte_bounds(a)  # NumPy 2 moved it
    start = a.__array_interface__["data"][0]
    reach = [start + item * (i * s0 + c * s1) for i in (0, rows - 1) for c in (0, cols - 1)]
    if rows and cols and (min(reach) < lo or max(reach) + item > hi):
        raise IndexError(f"a kernel would read outside its array: strides ({s0}, {s1}) over {rows} x {cols}")
    return np.lib.stride_tricks.as_strided(a, shape=(rows, cols), strides=(s0 * item, s1 * item), writeable=False)


def _hashes(col0, n, m, nnz, k0, k1, stream):
    from gpusketch import _kernels

    return _kernels._hash_values_np(int(col0), int(n), int(m), int(nnz), int(k0) | int(k1) << 32, int(stream))


def _c_order_rows(out, rows, cols):
    if not out._a.flags.c_contiguous or out._a.size != rows * cols:
        raise ValueError(f"a kernel writes a C-order {rows} x {cols} output, got shape {out.shape}")
    return out._a.reshape(rows, cols)


def _chunks(n, d):
    """Row ranges of about 1 MiB of d columns: the emulators' temporaries stay small, so
    that peak-memory tests on the stand-in measure the routes, not the emulation."""
    step = max(1, (1 << 17) // max(1, d))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _scatter_matrix(buckets, weights, m):
    """The (m x rows) sparse matrix with ``weights[i, t]`` at ``(buckets[i, t], i)``."""
    rows, nnz = buckets.shape
    cols = np.repeat(np.arange(rows), nnz)
    return scipy.sparse.csr_matrix((weights.ravel().astype(np.float64), (buckets.ravel(), cols)), shape=(m, rows))


def _emulate_scatter(A, n, d, s0, s1, col0, m, nnz, scale, k0, k1, stream, out):
    """hash_sketch_rowmajor / _colmajor: ``out (m x d) += S[:, col0:col0+n] @ A``."""
    b, sg = _hashes(col0, n, m, nnz, k0, k1, stream)
    rows = _strided(A, int(n), int(d), int(s0), int(s1))
    O = _c_order_rows(out, int(m), int(d))
    for a, c in _chunks(int(n), int(d)):
        O += _scatter_matrix(b[a:c], scale * sg[a:c], int(m)) @ rows[a:c]


def _emulate_sorted(A, d, s0, s1, nnz, scale, order, sgn, start, out, *, grid, block):
    """hash_sketch_sorted: bucket b = blockIdx.x sums its entries order[start[b]:start[b+1]]."""
    m = start.shape[0] - 1
    if grid[0] != m or (grid[1] if len(grid) > 1 else 1) * block[0] < int(d):
        raise ValueError(f"hash_sketch_sorted: grid {grid} x block {block} does not cover {m} buckets x {d} columns")
    rows = order._a // int(nnz)
    O = _c_order_rows(out, m, int(d))
    V = _strided(A, int(rows.max()) + 1 if rows.size else 0, int(d), int(s0), int(s1))
    owner = np.repeat(np.arange(m), np.diff(start._a))
    for a, c in _chunks(rows.size, int(d)):
        np.add.at(O, owner[a:c], (scale * sgn._a[a:c]).astype(O.dtype)[:, None] * V[rows[a:c]])


def _emulate_csr(indptr, indices, data, n, d, col0, m, nnz, scale, k0, k1, stream, out):
    """hash_sketch_csr: row i's entries scatter into column ``indices[p]`` of its buckets."""
    b, sg = _hashes(col0, n, m, nnz, k0, k1, stream)
    O = _c_order_rows(out, int(m), int(d))
    row = np.repeat(np.arange(int(n)), np.diff(indptr._a[: int(n) + 1]))
    p = np.arange(row.size)
    for t in range(int(nnz)):
        np.add.at(O, (b[row, t], indices._a[p]), (scale * sg[row, t]).astype(O.dtype) * data._a[p])


def _emulate_adjoint(Y, m, d, n, col0, nnz, scale, k0, k1, stream, out):
    """hash_adjoint: ``out (n x d) = S[:, col0:col0+n]ᵀ Y``."""
    b, sg = _hashes(col0, n, m, nnz, k0, k1, stream)
    Yr = _c_order_rows(Y, int(m), int(d))
    O = _c_order_rows(out, int(n), int(d))
    for a, c in _chunks(int(n), int(d)):
        O[a:c] = scale * sum(sg[a:c, t, None] * Yr[b[a:c, t]] for t in range(int(nnz)))


def _emulate_levels(A, n, d, s0, s1, col0, r, levels, thresh, k0, k1, stream, u0, u1, ustream, out):
    """hash_sketch_levels: column j keeps level t (row t·r + bucket) while its uniform < thresh[t]."""
    hb, _ = _hashes(col0, n, 1 << 30, 1, u0, u1, ustream)
    u = (hb[:, 0] + 0.5) / 2.0**30
    b, sg = _hashes(col0, n, int(levels) * int(r), levels, k0, k1, stream)
    rows = _strided(A, int(n), int(d), int(s0), int(s1))
    O = _c_order_rows(out, int(levels) * int(r), int(d))
    kept = np.where(u[:, None] < thresh._a[None, : int(levels)], sg, 0)  # sign 0: level not kept
    for a, c in _chunks(int(n), int(d)):
        O += _scatter_matrix(b[a:c], kept[a:c], O.shape[0]) @ rows[a:c]


def _emulate_gaussian_fill(S, m, c, j0, scale, k0, k1, stream):
    from gpusketch import _random

    G = _random.normal_block(int(m), int(j0), int(c), int(k0) | int(k1) << 32, int(stream), dtype=np.float64)
    _c_order_rows(S, int(m), int(c))[...] = float(scale) * G


def _butterflies(X2, hs):
    """Radix-2 stages h in ``hs`` of the unnormalised Walsh–Hadamard transform along axis 0."""
    L, d = X2.shape
    for h in hs:
        V = X2.reshape(L // (2 * h), 2, h, d)
        a, b = V[:, 0].copy(), V[:, 1].copy()
        V[:, 0], V[:, 1] = a + b, a - b


def _emulate_fwht_stage(X, L, d, h):
    _butterflies(_c_order_rows(X, int(L), int(d)), [int(h)])


def _emulate_fwht_local(X, L, d, log_tile, *, grid, block, shared_mem):
    """fwht_local: block (tile, column strip) applies stages 1 .. tile/2 to its tile."""
    tile = 1 << int(log_tile)
    strips = grid[1] if len(grid) > 1 else 1
    if grid[0] * tile != int(L) or strips * block[0] < int(d) or shared_mem < tile * block[0] * X.itemsize:
        raise ValueError(f"fwht_local: grid {grid}, block {block}, {shared_mem} B shared do not cover "
                         f"{L} x {d} in tiles of {tile} rows")
    _butterflies(_c_order_rows(X, int(L), int(d)), [1 << k for k in range(int(log_tile))])


def _emulate_kron_rows(packed, offsets, nrows, ncols, q, idx, r, D, out):
    """kron_rows: row i of the output is the Kronecker product of the factors' rows at the
    C-order multi-index of ``idx[i]``."""
    factors = [packed._a[o: o + n * c].reshape(n, c) for o, n, c in zip(offsets._a, nrows._a, ncols._a)]
    if len(factors) != int(q) or int(np.prod(ncols._a)) != int(D):
        raise ValueError("kron_rows: factor table and D disagree")
    multi = np.unravel_index(idx._a[: int(r)], tuple(int(n) for n in nrows._a))
    rows = factors[0][multi[0]]
    for F, j in zip(factors[1:], multi[1:]):
        rows = (rows[:, :, None] * F[j][:, None, :]).reshape(rows.shape[0], -1)
    _c_order_rows(out, int(r), int(D))[...] = rows


def _emulate_kron_hash_sketch(B, n, d, s0, s1, col0, q, dims, ms, nnzs, streams, keys, scale, out):
    """kron_hash_sketch: column j of S_1 ⊗ … ⊗ S_q has a nonzero for each combination of the
    factors' nonzeros at its C-order multi-index: bucket in C order of the factor buckets,
    sign the product of the factor signs."""
    from gpusketch import _kernels

    dims_, ms_, nnzs_ = (np.asarray(x._a, dtype=np.int64) for x in (dims, ms, nnzs))
    multi = np.unravel_index(int(col0) + np.arange(int(n)), tuple(int(v) for v in dims_))
    hashes = [_kernels._hash_values_at(multi[t], int(ms_[t]), int(nnzs_[t]),
                                       int(keys._a[2 * t]) | int(keys._a[2 * t + 1]) << 32, int(streams._a[t]))
              for t in range(int(q))]
    strides = np.cumprod(np.concatenate([ms_[1:], [1]])[::-1])[::-1]
    M = int(np.prod(ms_))
    rows = _strided(B, int(n), int(d), int(s0), int(s1))
    O = _c_order_rows(out, M, int(d))
    for combo in itertools.product(*[range(int(z)) for z in nnzs_]):
        bucket = sum(hashes[t][0][:, k] * strides[t] for t, k in enumerate(combo))
        sign = np.prod([hashes[t][1][:, k].astype(np.int64) for t, k in enumerate(combo)], axis=0)
        for a, c in _chunks(int(n), int(d)):
            O += _scatter_matrix(bucket[a:c, None], float(scale) * sign[a:c, None], M) @ rows[a:c]


# The kernels whose launches the stand-in carries out, from their CUDA sources' semantics
# (with the CPU twins' hash and Gaussian functions): a CuPy twin that uses only these
# computes for real, so its arguments' values (strides, offsets, seeds, scales, grids)
# are checked against the NumPy twin, not just their types.
_EMULATED = {
    "hash_values": _emulate_hash_values,
    "philox_blocks": _emulate_philox_blocks,
    "hash_sketch_rowmajor": _emulate_scatter,
    "hash_sketch_colmajor": _emulate_scatter,
    "hash_sketch_sorted": _emulate_sorted,
    "hash_sketch_csr": _emulate_csr,
    "hash_adjoint": _emulate_adjoint,
    "hash_sketch_levels": _emulate_levels,
    "gaussian_fill": _emulate_gaussian_fill,
    "fwht_stage": _emulate_fwht_stage,
    "kron_rows": _emulate_kron_rows,
    "kron_hash_sketch": _emulate_kron_hash_sketch,
}
# Launches not carried out (a kernel with no emulator; its outputs stay zero): a CuPy twin
# that made one is not compared.
_SKIPPED = [0]


class _RawModule:
    """``cupy.RawModule`` that compiles nothing: ``get_function`` hands out launchers
    that check each launch against the kernel's C signature and then carry it out as
    the CUDA source says it computes (``_EMULATED``)."""

    def __init__(self, code=None, options=(), name_expressions=None, **kwargs):
        self._signatures = _signatures(code)
        self._names = list(name_expressions or [])

    def get_function(self, expression):
        if self._names and expression not in self._names:
            raise KeyError(f"{expression} is not among the module's name_expressions")
        name, _, targs = expression.partition("<")
        tparams, params = self._signatures[name]
        targs = [t.strip() for t in targs.rstrip(">").split(",")] if targs else []
        if len(targs) != len(tparams):
            raise TypeError(f"{expression}: {len(targs)} template arguments for {tparams}")
        bind = dict(zip(tparams, targs))
        return _Launcher(expression, [(ptr, bind.get(t, t)) for ptr, t in params])


class _Launcher:
    def __init__(self, expression, params):
        self.expression, self.params = expression, params

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        where = self.expression
        for what, dims, top in (("grid", grid, (2**31 - 1, 65535, 65535)), ("block", block, (1024, 1024, 64))):
            if not isinstance(dims, tuple) or not 1 <= len(dims) <= 3:
                raise TypeError(f"{where}: {what} must be a tuple of 1-3 ints, got {dims!r}")
            for v, hi in zip(dims, top):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= hi:
                    raise ValueError(f"{where}: {what} {dims!r} out of range")
        if int(np.prod(block)) > 1024:
            raise ValueError(f"{where}: block {block!r} has more than 1024 threads")
        if not 0 <= int(shared_mem) <= _MAX_SHARED_BYTES:
            raise ValueError(f"{where}: shared_mem {shared_mem} out of range")
        if len(args) != len(self.params):
            raise TypeError(f"{where}: {len(args)} arguments for {len(self.params)} parameters")
        for i, (arg, (pointer, ctype)) in enumerate(zip(args, self.params)):
            want = np.dtype(_C_TYPES[ctype])
            if pointer:
                if not isinstance(arg, ndarray) or arg.dtype != want:
                    raise TypeError(f"{where}: argument {i} must be a device array of {want} ({ctype}*), "
                                    f"got {type(arg).__name__} {getattr(arg, 'dtype', '')}")
            elif not isinstance(arg, np.generic) or arg.dtype != want:
                raise TypeError(f"{where}: argument {i} must be a NumPy {want} scalar ({ctype}), got {arg!r}")
        LAUNCHES.append((where, tuple(int(g) for g in grid), tuple(int(b) for b in block)))
        kernel = where.partition("<")[0]
        if kernel == "hash_sketch_sorted":
            _emulate_sorted(*args, grid=grid, block=block)
        elif kernel == "fwht_local":
            _emulate_fwht_local(*args, grid=grid, block=block, shared_mem=shared_mem)
        elif kernel in _EMULATED:
            _EMULATED[kernel](*args)
        else:
            _SKIPPED[0] += 1


# The arguments each kernel operation writes in place (``out`` unless named here).
_WRITES = {"fwht_rows": ("X",), "scatter_add_rows": ("Z",), "hash_sketch_dense": ("outs",),
           "gaussian_sketch": ("outs",), "hash_sketch_levels": ("outs",)}
#: Twins that return one result per operand (a tuple), each compared on its own.
_PER_OPERAND = {"hash_sketch_dense", "gaussian_sketch", "hash_sketch_levels"}


def _host_copy(x):
    """A twin's device result as a dense host array (None for anything else, such as a pair)."""
    if isinstance(x, ndarray):
        return x._a.copy()
    if isinstance(x, _Sparse):
        return x._m.toarray()
    return None


def _written(value):
    """The device arrays a twin may write in place: ``value`` itself, or those in a list or tuple."""
    if isinstance(value, ndarray):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, ndarray)]
    return []


def _checked_twin(name, gpu_twin, cpu_twin):
    """Run the CuPy twin's own Python, its launches checked and carried out (``_Launcher``),
    then the NumPy twin; what the CuPy twin wrote in place is restored in between.  When
    every launch was carried out, the CuPy twin's result must agree with the NumPy twin's.
    The NumPy twin's result is the one returned."""
    signature = inspect.signature(gpu_twin)
    writes = _WRITES.get(name, ("out",))

    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        outputs = [a for k in writes for a in _written(bound.get(k))]
        saved = [a._a.copy() for a in outputs]
        skipped = _SKIPPED[0]
        with np.errstate(all="ignore"):
            gpu = gpu_twin(*args, **kwargs)
        computed = _SKIPPED[0] == skipped
        per_operand = name in _PER_OPERAND
        gpu = ([_host_copy(g) for g in gpu] if per_operand else [_host_copy(gpu)]) if computed else None
        for a, keep in zip(outputs, saved):
            a._a[...] = keep
        cpu = _device_fn(cpu_twin, host_ok=True)(*args, **kwargs)
        if gpu is not None and gpu[0] is not None:
            for got, want in zip(gpu, [_host_copy(c) for c in cpu] if per_operand else [_host_copy(cpu)]):
                tol = 1e-5 if want.dtype == np.float32 else 1e-9
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol * float(np.max(np.abs(want), initial=0.0)),
                                           err_msg=f"the CuPy twin of {name} disagrees with its NumPy twin")
            TWINS_COMPARED[name] = TWINS_COMPARED.get(name, 0) + 1
        return cpu

    return run


def _random_module():
    def default_rng(seed=None):
        gen = np.random.default_rng(seed)
        draws = [n for n in dir(gen) if not n.startswith("_") and callable(getattr(gen, n))]
        return types.SimpleNamespace(**{n: _device_fn(getattr(gen, n)) for n in draws})

    class RandomState:
        def __init__(self, seed=None):
            self._rs = np.random.RandomState(seed)

        def __getattr__(self, name):
            draw = getattr(self._rs, name)

            def run(*args, dtype=None, **kwargs):  # CuPy's draws take a dtype, NumPy's RandomState does not
                out = _device_fn(draw)(*args, **kwargs)
                return out if dtype is None else out.astype(dtype, copy=False)

            return run

    return _namespace("cupy.random", np.random, {"default_rng": default_rng, "RandomState": RandomState})


@functools.lru_cache(maxsize=None)
def build():
    """The fake modules by name, ready for ``sys.modules`` (built once)."""
    cuda = types.ModuleType("cupy.cuda")
    cuda.runtime = _runtime()
    cuda.Device = _Device
    cuda.Stream = _Stream
    cuda.get_current_stream = lambda: _Stream()
    cuda.Event = object
    cuda.profiler = types.SimpleNamespace(start=lambda: None, stop=lambda: None)
    cuda.nvtx = types.SimpleNamespace(RangePush=lambda *a, **k: None, RangePop=lambda: None)
    linalg = _namespace("cupy.linalg", np.linalg,
                        {n: _silent(getattr(np.linalg, n)) for n in ("cholesky", "solve", "inv")})
    random = _random_module()
    cupy = _namespace(
        "cupy",
        np,
        {
            "ndarray": ndarray,
            "asarray": _asarray,
            "array": _array,
            "asnumpy": _asnumpy,
            "get_array_module": _get_array_module,
            "cuda": cuda,
            "linalg": linalg,
            "random": random,
            "RawModule": _RawModule,
            # Zeroed, so that code after a launch that did not run reads zeros, not garbage.
            "empty": _device_fn(np.zeros),
            "empty_like": _device_fn(np.zeros_like),
            "repeat": _repeat,
            "memoize": lambda for_each_device=False: (lambda f: functools.lru_cache(maxsize=None)(f)),
            "get_default_memory_pool": lambda: _MEMORY_POOL,
            "get_default_pinned_memory_pool": lambda: _MEMORY_POOL,
            "__version__": "0.0-fake",
            "__fake__": True,
        },
    )
    sparse_extra = {
        "csr_matrix": csr_matrix,
        "csc_matrix": csc_matrix,
        "coo_matrix": coo_matrix,
        "spmatrix": _Sparse,
        "issparse": lambda x: isinstance(x, _Sparse),
        "isspmatrix": lambda x: isinstance(x, _Sparse),
    }
    sparse = _namespace("cupyx.scipy.sparse", scipy.sparse, sparse_extra)
    sparse_linalg = _namespace(
        "cupyx.scipy.sparse.linalg",
        scipy.sparse.linalg,
        {"LinearOperator": _LinearOperator, "lsmr": _lsmr, "lsqr": _lsqr},
    )
    dense_linalg = _namespace("cupyx.scipy.linalg", scipy.linalg,
                              {"solve_triangular": _silent(scipy.linalg.solve_triangular)})
    cupyx = types.ModuleType("cupyx")
    cupyx_scipy = types.ModuleType("cupyx.scipy")
    cupyx.scipy = cupyx_scipy
    cupyx_scipy.sparse = sparse
    cupyx_scipy.linalg = dense_linalg
    sparse.linalg = sparse_linalg
    cupyx.scatter_add = lambda a, slices, value: np.add.at(_unwrap(a), _unwrap(slices, True), _unwrap(value, True))
    return {
        "cupy": cupy,
        "cupy.cuda": cuda,
        "cupy.cuda.runtime": cuda.runtime,
        "cupy.linalg": linalg,
        "cupy.random": random,
        "cupyx": cupyx,
        "cupyx.scipy": cupyx_scipy,
        "cupyx.scipy.sparse": sparse,
        "cupyx.scipy.sparse.linalg": sparse_linalg,
        "cupyx.scipy.linalg": dense_linalg,
    }


class _LinearOperator:
    """cupyx's LinearOperator: callables that take and return device arrays."""

    def __init__(self, shape, matvec, rmatvec=None, matmat=None, dtype=None, rmatmat=None):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype or np.float64)
        self._matvec, self._rmatvec = matvec, rmatvec

    def _host(self):
        def call(f):
            def run(v):
                out = f(ndarray(np.ascontiguousarray(v)))
                if not isinstance(out, ndarray):
                    raise TypeError(f"a LinearOperator callback returned {type(out)}, not a device array")
                return out._a

            return run

        return scipy.sparse.linalg.LinearOperator(self.shape, matvec=call(self._matvec), rmatvec=call(self._rmatvec),
                                                  dtype=self.dtype)


def _solver(fn):
    def run(A, b, *args, **kwargs):
        if not isinstance(b, ndarray):
            raise TypeError(f"b must be a device array, got {type(b)}")
        A = A._host() if isinstance(A, _LinearOperator) else _unwrap(A)
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        return _wrap(fn(A, b._a, *args, **kwargs))

    return run


_lsmr = _solver(scipy.sparse.linalg.lsmr)
_lsqr = _solver(scipy.sparse.linalg.lsqr)


def _register_with_dask():
    """What ``dask.array`` does at import when CuPy is importable: treat device
    arrays as chunks (else Dask defers ``X @ v`` to the array's higher priority)."""
    chunk_types = sys.modules.get("dask.array.chunk_types")
    if chunk_types is not None:
        for t in (ndarray, _Sparse):
            if t not in chunk_types._HANDLED_CHUNK_TYPES:
                chunk_types.register_chunk_type(t)


@contextlib.contextmanager
def installed():
    """Put the fake modules in ``sys.modules`` and the NumPy twins behind the
    registry's ``"cupy"`` entries, for the duration of the block."""
    from gpusketch import _kernels

    mods = build()
    saved = {k: sys.modules.get(k) for k in mods}
    twins = dict(_kernels._TWINS)
    sys.modules.update(mods)
    _kernels._module_loader.cache_clear()
    _kernels._sm_count.cache_clear()
    for (name, backend), fn in twins.items():
        if backend == "cupy":
            _kernels._TWINS[(name, backend)] = _checked_twin(name, fn, twins[(name, "numpy")])
    _register_with_dask()
    try:
        yield mods["cupy"]
    finally:
        _kernels._module_loader.cache_clear()
        _kernels._sm_count.cache_clear()
        _kernels._TWINS.clear()
        _kernels._TWINS.update(twins)
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
