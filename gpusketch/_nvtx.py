"""nvtx ranges for profilers (Nsight Systems), a no-op without the ``nvtx`` package.

``annotate`` marks public entry points and kernel launches.  The ``nvtx``
package is looked up once, on first use, never at import of gpusketch.
"""

from __future__ import annotations

import contextlib
import functools

__all__ = ["annotate"]


@functools.lru_cache(maxsize=None)
def _nvtx():
    try:
        import nvtx  # noqa: PLC0415
    except Exception:
        return None
    return nvtx


def annotate(name: str):
    """Context manager (and decorator) opening an nvtx range called ``name``.

    Returns a ``contextlib.nullcontext`` when ``nvtx`` is not installed, so the
    cost of an unused range is one cached lookup.
    """
    mod = _nvtx()
    if mod is None:
        return _Null()
    return mod.annotate(name, domain="gpusketch")


class _Null(contextlib.ContextDecorator):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
