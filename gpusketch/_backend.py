"""Backend layer: which array module, which device, and input validation.

This is the one place that answers "NumPy or CuPy?".  It recognises CuPy and
cupyx.scipy.sparse objects by the module their type lives in, so importing
gpusketch never imports CuPy (or torch, or Dask).  Every public entry point
validates its inputs through the helpers here, before doing any work.  It also
holds the CPU backend's BLAS thread policy (``scipy_blas_serial``, ``all_blas_serial``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import secrets
import threading
import warnings

import numpy as np

__all__ = [
    "array_namespace",
    "is_cupy_array",
    "is_cupy_sparse",
    "is_scipy_sparse",
    "is_sparse",
    "as_operand",
    "check_positive_int",
    "check_real_in",
    "check_seed",
    "check_memory",
    "free_bytes",
    "device_block_rows",
    "cupy_available",
    "check_finite",
    "linalg_modules",
    "to_dense",
    "as_system",
    "to_host",
    "sparse_module",
    "scipy_blas_serial",
    "all_blas_serial",
]

_FLOAT_TYPES = (np.float32, np.float64)


def _type_module(x) -> str:
    return type(x).__module__ or ""


def is_cupy_array(x) -> bool:
    """True for a ``cupy.ndarray``, recognised without importing CuPy."""
    mod = _type_module(x)
    return mod.startswith("cupy") and not mod.startswith("cupyx") and hasattr(x, "__cuda_array_interface__")


def _sparse_type(x, package) -> bool:
    # A class of the package's sparse modules in x's MRO (subclasses count), but not of its
    # ``.linalg``: a LinearOperator is no matrix.
    return any(c.__module__.startswith(package) and not c.__module__.startswith(package + ".linalg")
               for c in type(x).__mro__ if isinstance(c.__module__, str))


def is_cupy_sparse(x) -> bool:
    """True for a ``cupyx.scipy.sparse`` matrix (not a ``cupyx.scipy.sparse.linalg`` operator)."""
    return _sparse_type(x, "cupyx.scipy.sparse")


def is_scipy_sparse(x) -> bool:
    """True for a SciPy sparse matrix or array (not a ``scipy.sparse.linalg`` operator)."""
    return _sparse_type(x, "scipy.sparse")


def is_sparse(x) -> bool:
    return is_scipy_sparse(x) or is_cupy_sparse(x)


def _on_gpu(x) -> bool:
    return is_cupy_array(x) or is_cupy_sparse(x)


def _device_id(x):
    # cupyx sparse matrices have no usable .device; their data array does.
    return (x.data if is_cupy_sparse(x) else x).device.id


def array_namespace(*arrays):
    """Return ``numpy`` or ``cupy`` for the given inputs.

    Inputs that are ``None`` or Python scalars are ignored.  Mixing host and
    device inputs raises ``TypeError`` naming both types: gpusketch never
    copies silently between host and device.  CuPy inputs on different
    devices raise ``ValueError``.
    """
    host, dev = None, None
    for a in arrays:
        if a is None or isinstance(a, (numbers.Number, str, bytes)):
            continue
        if _on_gpu(a):
            dev = dev if dev is not None else a
        else:
            host = host if host is not None else a
    devices = {_device_id(a) for a in arrays if a is not None and _on_gpu(a)}
    if len(devices) > 1:
        raise ValueError(f"inputs live on different CUDA devices {sorted(devices)}; move them to one device first")
    if host is not None and dev is not None:
        raise TypeError(
            "mixed host and device inputs: got "
            f"{type(host).__module__}.{type(host).__name__} and "
            f"{type(dev).__module__}.{type(dev).__name__}; move both to the same "
            "device (cupy.asarray / cupy.asnumpy) first"
        )
    if dev is not None:
        import cupy

        return cupy
    return np


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def check_dtype(dtype, name):
    """The dtype an input of ``dtype`` is computed in: float64 for bool and
    integers, float32/float64 in native byte order for those (a big-endian
    array read from a file is copied once, as NumPy's own ufuncs would return
    it; kept, it made outputs big-endian, SciPy sparse refused it, and
    ``dtype == float64`` tests failed); ``TypeError`` naming ``name`` else."""
    dtype = np.dtype(dtype)
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    if dtype.type in _FLOAT_TYPES:
        return np.dtype(dtype.type)
    if dtype == np.float16:
        raise TypeError(f"{name} has dtype float16, which is not supported; convert to float32")
    if dtype.kind == "c":
        raise TypeError(f"{name} has complex dtype {dtype}; only real float32/float64 inputs are supported")
    raise TypeError(f"{name} has unsupported dtype {dtype}; expected a real numeric array")


def as_operand(A, name="A", *, ndim=(1, 2)):
    """Validate a matrix operand and return ``(A, xp)``.

    Dense inputs (NumPy/CuPy) must have ``ndim`` in ``ndim``; SciPy/cupyx
    sparse inputs are returned in CSR format.  Array-likes (pandas, xarray,
    ``np.matrix``) become plain NumPy arrays; Dask arrays are refused (they
    have ``gpusketch.dask``).  Boolean and integer arrays are
    upcast to float64 (a new array: the caller's is never modified), float32
    and float64 are kept, float16/complex/object/str raise ``TypeError``.
    Strides are left alone: the kernels read C-order, Fortran-order and
    strided views directly.
    """
    xp = array_namespace(A)
    if is_sparse(A):
        if A.ndim != 2:
            raise ValueError(f"{name} must be a 2-D sparse matrix, got ndim={A.ndim}")
        dt = check_dtype(A.dtype, name)
        A = A.tocsr()
        if A.dtype != dt:
            A = A.astype(dt)
        return A, xp
    if xp is np:
        if isinstance(A, (list, tuple)):
            A = np.asarray(A)
        elif not isinstance(A, np.ndarray):
            if type(A).__module__.split(".")[0] == "dask":  # np.asarray would compute it all, silently
                raise TypeError(f"{name} is a Dask array, which this function would compute whole: "
                                f"gpusketch.dask has the calls that work chunk by chunk, or pass {name}.compute()")
            if not hasattr(A, "__array__"):
                raise TypeError(
                    f"{name} must be a NumPy/CuPy array or a SciPy/cupyx sparse matrix, got {type(A).__name__}"
                )
            A = np.asarray(A)  # pandas, xarray and other array-likes, as SciPy takes them
        elif type(A) is not np.ndarray:
            A = np.asarray(A)  # np.matrix, memmap: a plain view (matrix's * and 2-D rows break the algebra)
    if A.ndim not in ndim:
        raise ValueError(f"{name} must be {' or '.join(f'{k}-D' for k in ndim)}, got shape {tuple(A.shape)}")
    dt = check_dtype(A.dtype, name)
    if A.dtype != dt:
        A = A.astype(dt)
    return A, xp


def check_positive_int(value, name, *, minimum=1, maximum=None, why=""):
    """Return ``value`` as int, or raise naming ``name``.

    Python and NumPy integers are accepted; bools, floats and others raise
    ``TypeError``; values below ``minimum`` or above ``maximum`` raise
    ``ValueError`` (``why`` says what sets the maximum).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}{why}, got {value}")
    return value


def check_positive_real(value, name):
    """Return ``value`` as float, or raise naming ``name``.

    Python and NumPy reals are accepted; anything else (bools and non-numbers
    included), zero, negative, NaN and infinite values raise ``ValueError``,
    as the other scalar parameters (``p``, ``eps``) do.
    """
    v = _finite_real(value)
    if v is None or not v > 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def check_real_in(value, name, lo, hi, *, closed="[]"):
    """Return ``value`` as float when it is a finite real number in the interval from
    ``lo`` to ``hi`` (``closed``: ``"["``/``"("`` then ``"]"``/``")"``), or raise
    ``ValueError`` naming ``name`` and the interval.  Bools, non-numbers, NaN and
    infinities are refused (``hi = math.inf`` bounds nothing but finiteness)."""
    v = _finite_real(value)
    if v is None or not ((lo <= v if closed[0] == "[" else lo < v) and (v <= hi if closed[1] == "]" else v < hi)):
        raise ValueError(f"{name} must lie in {closed[0]}{lo:g}, {hi:g}{closed[1]}, got {value!r}")
    return v


def _finite_real(value):
    """``value`` as a float when it is a finite real number (Python or NumPy, not a bool), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def check_seed(seed):
    """Return a 64-bit seed: ``None`` draws one from OS entropy.

    Accepts Python or NumPy integers in ``[0, 2**64)``.  Generators and
    ``RandomState`` objects are refused: a sketch is a pure function of its
    integer seed, so it can be replayed.
    """
    if seed is None:
        return secrets.randbits(64)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (numbers.Integral, np.integer)):
        raise TypeError(f"seed must be None or an integer in [0, 2**64), got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def free_bytes(xp):
    """Bytes free for new arrays: the host's available memory, or the device's free
    memory plus what CuPy's pool holds unused; ``None`` where the host cannot tell."""
    if xp is np:
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    free, _total = xp.cuda.runtime.memGetInfo()
    return free + xp.get_default_memory_pool().free_bytes()


def device_block_rows(n, row_bytes, xp, *, share=4, minimum=1):
    """Rows of an n-row device workspace (``row_bytes`` per row) to form at once.

    All n while the whole takes at most half the free device memory (one kernel
    or cuBLAS call, the routes' speed as measured); past that, blocks taking
    ``1/share`` of it, at least ``minimum`` rows, so a problem that fits is solved
    in blocks rather than refused by the allocator.
    """
    free = free_bytes(xp)
    if free is None or n * row_bytes <= free // 2:
        return n
    return max(minimum, free // share // max(row_bytes, 1))


def check_memory(nbytes, what, xp):
    """Raise ``MemoryError`` naming ``what`` and its size if it cannot fit.

    Called before allocating a sketch result or a temporary, so the user sees
    "sketch output of 12.0 GiB (m=..., d=...) does not fit in 9.5 GiB free"
    rather than an allocator traceback.
    """
    free = free_bytes(xp)
    if free is not None and nbytes > free:
        where = "device" if xp is not np else "host"
        raise MemoryError(
            f"{what} needs {nbytes / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB of {where} memory is free"
        )


def as_matrix(A, name="A", *, allow_empty=False):
    """A finite 2-D dense or sparse matrix operand of a solver: ``(A, xp)`` (``as_operand`` + ``check_finite``).

    A matrix without rows or columns is refused unless ``allow_empty`` (rank
    and independent rows have an answer for it; scores and factorizations do not).
    """
    A, xp = as_operand(A, name, ndim=(2,))
    if not allow_empty:
        _check_nonempty(A, name)
    check_finite(A, name)
    return A, xp


def _check_nonempty(A, name):
    if 0 in A.shape:
        raise ValueError(f"{name} is empty (shape {A.shape})")


def as_system(A, b, *, b_ndim=(1,)):
    """Validate a regression system ``(A, b)`` and return ``(A, b, xp)``.

    A is a nonempty 2-D dense or sparse matrix, b a dense array with A's rows;
    both finite, on one device (the solvers' shared entry check).
    """
    A, _ = as_operand(A, "A", ndim=(2,))
    b, _ = as_operand(b, "b", ndim=b_ndim)
    xp = array_namespace(A, b)
    _check_nonempty(A, "A")
    if is_sparse(b):
        raise TypeError("b must be a dense array")
    if b.shape[0] != A.shape[0]:
        raise ValueError(f"b has {b.shape[0]} rows but A has {A.shape[0]}: shapes {A.shape} and {b.shape}")
    check_finite(A, "A")
    check_finite(b, "b")
    return A, b, xp


def to_host(x):
    """A NumPy copy of a NumPy/CuPy array (for the small problems solved on the host)."""
    return x.get() if is_cupy_array(x) else np.asarray(x)


def sparse_module(xp):
    """``scipy.sparse`` for NumPy, ``cupyx.scipy.sparse`` for CuPy."""
    if xp is np:
        import scipy.sparse

        return scipy.sparse
    import cupyx.scipy.sparse

    return cupyx.scipy.sparse


def to_dense(Y):
    """``Y`` as a dense array (products with sparse matrices may return sparse ones)."""
    return Y.toarray() if is_sparse(Y) else Y


#: Host arrays are checked for NaN/Inf in blocks of this many bytes: ``isfinite`` of a
#: whole A is a boolean array an eighth of A's float64 size.
_FINITE_BLOCK_BYTES = 4 << 20


def _all_finite(data, xp):
    if xp is not np or data.ndim == 0 or data.nbytes <= _FINITE_BLOCK_BYTES:
        return bool(xp.isfinite(data).all())
    if data.ndim == 2 and data.flags.f_contiguous and not data.flags.c_contiguous:
        data = data.T  # blocks of contiguous columns, not of strided rows
    step = max(1, _FINITE_BLOCK_BYTES // max(1, data.itemsize * math.prod(data.shape[1:])))
    return all(bool(np.isfinite(data[a : a + step]).all()) for a in range(0, data.shape[0], step))


def check_finite(A, name):
    """Raise ``ValueError`` if the dense or sparse ``A`` holds NaN or Inf (solvers only)."""
    data = A.data if is_sparse(A) else A
    xp = array_namespace(data)
    if data.size and not _all_finite(data, xp):
        raise ValueError(f"{name} contains NaN or Inf")


def linalg_modules(xp):
    """``(dense, sparse)`` SciPy-style linalg modules for ``xp``.

    NumPy inputs get ``scipy.linalg`` and ``scipy.sparse.linalg``; CuPy inputs
    get ``cupyx.scipy.linalg`` and ``cupyx.scipy.sparse.linalg``.  Solvers call
    through these so that they never branch on the backend themselves.
    """
    if xp is np:
        import scipy.linalg
        import scipy.sparse.linalg

        return scipy.linalg, scipy.sparse.linalg
    import cupyx.scipy.linalg
    import cupyx.scipy.sparse.linalg

    return cupyx.scipy.linalg, cupyx.scipy.sparse.linalg


# ---------------------------------------------------------------------------
# CPU BLAS thread pools
# ---------------------------------------------------------------------------

#: Set to "0" to leave every BLAS thread count alone (read once, at first use).
BLAS_POLICY_ENV = "GPUSKETCH_BLAS_POLICY"


def _scipy_only(libs, scipy_dir):
    """The controllers in ``libs`` whose library lives under ``scipy_dir`` (``…/scipy``,
    ``…/scipy.libs``), provided some other BLAS is loaded too; else ``()``."""
    inside = [lib for lib in libs if os.path.realpath(lib.filepath).startswith(scipy_dir)]
    return tuple(inside) if inside and len(inside) < len(libs) else ()


@functools.lru_cache(maxsize=None)
def _blas_libs():
    """threadpoolctl controllers of the loaded BLAS libraries (after SciPy's is loaded), or ()."""
    if os.environ.get(BLAS_POLICY_ENV, "1") == "0":
        return ()
    try:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415
    except ImportError:
        return ()
    import scipy.linalg  # noqa: F401, PLC0415  (loads SciPy's BLAS)

    with warnings.catch_warnings():  # threadpoolctl warns about unrelated OpenMP runtimes
        warnings.simplefilter("ignore")
        return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


@functools.lru_cache(maxsize=None)
def _scipy_blas_pools():
    import scipy  # noqa: PLC0415

    site = os.path.dirname(os.path.realpath(scipy.__path__[0]))
    return _scipy_only(_blas_libs(), os.path.join(site, "scipy"))


class _SerialPools:
    """Re-entrant, thread-safe context: the selected BLAS pools run on one thread inside it.

    The outermost entry (over all Python threads) saves their thread counts and
    sets 1; the last exit restores them.  ``pools`` is a callable returning the
    threadpoolctl controllers (``()``: do nothing).
    """

    def __init__(self, pools):
        self._pools = pools
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = ()

    def __enter__(self):
        pools = self._pools()
        if pools:
            with self._lock:
                if self._depth == 0:
                    self._saved = tuple(pool.num_threads for pool in pools)
                    for pool in pools:
                        pool.set_num_threads(1)
                self._depth += 1
        return self

    def __exit__(self, *exc):
        pools = self._pools()
        if pools:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for pool, n in zip(pools, self._saved):
                        pool.set_num_threads(n)
        return False

    @contextlib.contextmanager
    def lifted(self):
        """Inside an entry, the pools at their saved thread counts for the block (one large
        call); then on one thread again.  Outside any entry, nothing changes."""
        pools = self._pools()
        with self._lock:
            lift = bool(pools) and self._depth > 0
            if lift:
                for pool, n in zip(pools, self._saved):
                    pool.set_num_threads(n)
        try:
            yield
        finally:
            if lift:
                with self._lock:
                    for pool in pools:
                        pool.set_num_threads(1)


#: SciPy's own BLAS on one thread (held by every public entry point, through ``annotate``).
#:
#: pip wheels of NumPy and SciPy each bundle an OpenBLAS with its own thread
#: pool (SciPy issue #15050).  After a call, a pool's threads spin for a
#: while; when NumPy's and SciPy's BLAS calls alternate, as they do in the
#: solvers' loops (NumPy products, SciPy triangular solves), each pool runs
#: while the other's threads still spin, on the same cores.  On a 2-core
#: machine that made the steps of ``kron.lstsq`` (90000 rows, 12100
#: samples) 2.0-2.7× slower than with either pool on one thread.  SciPy's BLAS
#: does only small work here (triangular solves and inverses of d × d
#: factors, pivoted QR of sampled rows), so it is the one made serial; NumPy
#: keeps its threads for the large products.  Nothing happens when
#: ``threadpoolctl`` is missing, when NumPy and SciPy share one BLAS (conda,
#: system builds), or when ``GPUSKETCH_BLAS_POLICY=0``.  Thread counts are
#: process-wide: BLAS calls that other Python threads make meanwhile follow
#: them too.  (threadpoolctl lets only the first Python thread that sets an
#: OpenBLAS thread count change it while that thread lives; entries from
#: other threads then leave the count as it is.)
scipy_blas_serial = _SerialPools(_scipy_blas_pools)

def scipy_blas_threaded():
    """Context: SciPy's BLAS on its threads again, inside ``scipy_blas_serial``, for one
    large SciPy LAPACK call that NumPy has no form of (a pivoted QR of a 3000 × 3000
    matrix: 1.7-1.9 s threaded against 3.4 s on one thread, 2-core CPU); left serial
    while ``all_blas_serial`` holds (blocks on Python threads)."""
    if all_blas_serial._depth > 0:
        return contextlib.nullcontext()
    return scipy_blas_serial.lifted()


#: Every BLAS on one thread: held while the CPU twins run blocks on their own Python
#: threads (``_kernels._parallel_sum``), so that each block's products do not start a
#: BLAS pool per thread on the same cores (the Gaussian sketch of 2^16 × 64 into 256
#: rows, 2 cores: 1.55-1.65× faster, its adjoint 1.6-1.7×).
all_blas_serial = _SerialPools(_blas_libs)
