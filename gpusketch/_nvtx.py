"""nvtx ranges for profilers (Nsight Systems), a no-op without the ``nvtx`` package.

``annotate`` marks public entry points and kernel launches.  The ``nvtx``
package is looked up once, on first use, never at import of gpusketch.
Since every public entry point enters ``annotate``, its range also holds the
CPU backend's BLAS thread policy (``_backend.scipy_blas_serial``).
"""

from __future__ import annotations

import contextlib
import functools

from ._backend import scipy_blas_serial

__all__ = ["annotate"]


@functools.lru_cache(maxsize=None)
def _nvtx():
    try:
        import nvtx  # noqa: PLC0415
    except Exception:
        return None
    return nvtx


def annotate(name: str):
    """Context manager opening an nvtx range called ``name``, inside ``scipy_blas_serial``.

    Without ``nvtx`` the range is a no-op, so an unused range costs one cached
    lookup and the re-entrant thread policy's counter.
    """
    mod = _nvtx()
    rng = contextlib.nullcontext() if mod is None else mod.annotate(name, domain="gpusketch")
    return _Range(rng)


class _Range:
    __slots__ = ("_rng",)

    def __init__(self, rng):
        self._rng = rng

    def __enter__(self):
        scipy_blas_serial.__enter__()
        try:
            self._rng.__enter__()
        except BaseException:
            scipy_blas_serial.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            return self._rng.__exit__(*exc)
        finally:
            scipy_blas_serial.__exit__(None, None, None)
