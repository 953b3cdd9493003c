"""Validation of group lists and the per-group quantities every fair solver needs."""

from __future__ import annotations

from .._backend import array_namespace, as_operand, check_finite, is_sparse, to_dense


def as_groups(groups, name="groups"):
    """Validate ``groups`` (a non-empty list of 2-D arrays sharing d columns); return ``(groups, xp)``.

    Sparse groups are densified (the solvers project every row); dtypes are
    unified to float64 unless every group is float32.
    """
    if not isinstance(groups, (list, tuple)):
        raise TypeError(f"{name} must be a list of 2-D arrays (one per group), got {type(groups).__name__}")
    if len(groups) == 0:
        raise ValueError(f"{name} must contain at least one group")
    out = []
    for i, A in enumerate(groups):
        A, _ = as_operand(A, f"{name}[{i}]", ndim=(2,))
        A = to_dense(A) if is_sparse(A) else A
        if A.shape[0] == 0:
            raise ValueError(f"{name}[{i}] is empty (no rows)")
        if out and A.shape[1] != out[0].shape[1]:
            raise ValueError(
                f"{name}[{i}] has {A.shape[1]} columns but {name}[0] has {out[0].shape[1]}: groups must share d"
            )
        check_finite(A, f"{name}[{i}]")
        out.append(A)
    xp = array_namespace(*out)
    dtype = out[0].dtype if all(A.dtype == out[0].dtype for A in out) else xp.float64
    return [A.astype(dtype, copy=False) for A in out], xp


def group_costs2(groups, Q, xp):
    """``||A_i − A_i QᵀQ||_F²`` per group for Q with orthonormal rows (exact residuals, no cancellation)."""
    out = []
    for A in groups:
        R = A - (A @ Q.T) @ Q
        out.append(float((R * R).sum()))
    return out
