"""Every public call gives the same answer on the device route as on the host, for the same seed.

DESIGN: the same seed gives the same sketch on CPU and GPU, so every algorithm
built on the sketches takes the same samples and reaches the same result, up
to float round-off.  Each call runs on NumPy and on CuPy (or, without a GPU, on
the NumPy-backed stand-in, where the device branches' Python runs and the
kernels are the CPU twins: measured agreement 0 to 7e-14).  Floats agree to
``rtol`` 1e-9; sampled indices, ranks and column choices exactly.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as _sp

import gpusketch as gs
from conftest import to_numpy
from gpusketch import fair, kron, robust

_rng = np.random.default_rng(0)
_A = _rng.standard_normal((20000, 20)) * np.logspace(0, 1, 20)
_b = _A @ _rng.standard_normal(20) + _rng.standard_normal(20000)
_b[:500] = 1e3  # gross outliers for the robust solvers
_F = [_rng.standard_normal((300, 5)), _rng.standard_normal((200, 4))]
_bk = np.kron(*_F) @ _rng.standard_normal(20) + _rng.standard_normal(60000)


def _groups(M):
    return [M[:10000], M[10000:]]


CALLS = {
    "lstsq sketch": lambda A, b, F, bk: gs.lstsq(A, b, method="sketch", seed=1).x,
    "lstsq precondition": lambda A, b, F, bk: gs.lstsq(A, b, seed=1).x,
    "lstsq direct": lambda A, b, F, bk: gs.lstsq(A, b, method="direct").x,
    "lstsq precondition, 2-D b": lambda A, b, F, bk: gs.lstsq(A, A[:, :3] * 0.5 + b[:, None], seed=1).x,
    "leverage_scores": lambda A, b, F, bk: gs.leverage_scores(A, seed=1),
    "leverage_sample": lambda A, b, F, bk: gs.leverage_sample(A, 300, seed=1).indices,
    "lewis_weights": lambda A, b, F, bk: gs.lewis_weights(A, 1, seed=1),
    "lp_regression p=1": lambda A, b, F, bk: gs.lp_regression(A, b, 1, seed=1).x,
    "lp_regression p=1.5": lambda A, b, F, bk: gs.lp_regression(A, b, 1.5, seed=1).x,
    "rank": lambda A, b, F, bk: gs.rank(A, seed=1),
    "independent_rows": lambda A, b, F, bk: gs.independent_rows(A, seed=1),
    "low_rank": lambda A, b, F, bk: abs(gs.low_rank(A, 5, seed=1).V),
    "randomized_svd": lambda A, b, F, bk: _svd_parts(gs.randomized_svd(A, 5, seed=1)),
    "irls": lambda A, b, F, bk: robust.irls(A, b, robust.TukeyLoss(3.0), seed=1).x,
    "tukey sampling": lambda A, b, F, bk: robust.tukey_regression(A, b, 3.0, seed=1).x,
    "tukey oblivious": lambda A, b, F, bk: robust.tukey_regression(A, b, 3.0, method="oblivious", seed=1).x,
    "heavy_coordinates": lambda A, b, F, bk: robust.heavy_coordinates(A, 21, seed=1),
    "heavy_coordinates p=1.5": lambda A, b, F, bk: robust.heavy_coordinates(A, 5, p=1.5, seed=1),
    "kron.lstsq": lambda A, b, F, bk: kron.lstsq(F, bk, seed=1).x,
    "kron.lstsq sketch": lambda A, b, F, bk: kron.lstsq(F, bk, method="sketch", seed=1).x,
    "kron.lp_regression": lambda A, b, F, bk: kron.lp_regression(F, bk, 1, seed=1).x,
    "kron.low_rank": lambda A, b, F, bk: (lambda r: np.r_[r.cost, to_numpy(r.V).ravel()])(kron.low_rank(F, 3, seed=1)),
    "kron.rank_regression": lambda A, b, F, bk: kron.rank_regression(A[:300], b[:300], seed=1).x,
    "fair.low_rank": lambda A, b, F, bk: fair.cost(_groups(A), fair.low_rank(_groups(A), 3, seed=1).V),
    "fair.column_subset": lambda A, b, F, bk: fair.column_subset(_groups(A), 3, seed=1).columns,
    "fair.regression": lambda A, b, F, bk: fair.regression(_groups(A), _groups(b)).x,
    "lstsq direct, zero column": lambda A, b, F, bk: gs.lstsq(_zero_column(A), b, method="direct").x,
    "lstsq precondition, zero column": lambda A, b, F, bk: gs.lstsq(_zero_column(A), b, seed=1).x,
    "leverage exact, zero column": lambda A, b, F, bk: gs.leverage_scores(_zero_column(A), exact=True),
    "irls, zero column": lambda A, b, F, bk: robust.irls(_zero_column(A), b, robust.HuberLoss(1.0), seed=1).x,
}


def _svd_parts(usv):
    """s, Vt and U's first rows in one vector: the singular vectors' signs are fixed
    (``svd_signs``), so they agree across devices as s does."""
    U, s, Vt = (to_numpy(v) for v in usv)
    return np.concatenate([s, Vt.ravel(), U[:100].ravel()])


def _zero_column(A):
    """A with column 3 zeroed, on A's device: the Gram's Cholesky fails.  NumPy raises;
    CuPy does not (it checks cuSOLVER's info only under ``cupyx.errstate``) and the
    stand-in returns NaN in its place, so the device route must notice by itself."""
    Z = A.copy()
    Z[:, 3] = 0.0
    return Z


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CALLS))
def test_device_route_agrees_with_the_host_route(cupy_or_fake, name):
    cp = cupy_or_fake
    call = CALLS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same warnings on both routes (rank-deficient sketches etc.)
        host = np.asarray(to_numpy(call(_A, _b, _F, _bk)))
        dev = np.asarray(to_numpy(call(cp.asarray(_A), cp.asarray(_b), [cp.asarray(f) for f in _F], cp.asarray(_bk))))
    assert dev.shape == host.shape
    if host.dtype.kind in "iub":
        np.testing.assert_array_equal(dev, host)
    else:
        np.testing.assert_allclose(dev, host, rtol=1e-9, atol=1e-9 * float(np.max(np.abs(host), initial=0.0)))


# A sparse A (CSR, 20 % dense, with a unit diagonal so it has full column rank): the
# sparse routes have device branches of their own (cupyx CSR products, the rank
# sketches' CSC matrices, low_rank's sparse column sketch).
_As = (_sp.random(20000, 20, density=0.2, random_state=1, format="csr") + _sp.eye(20000, 20)).tocsr()

SPARSE_CALLS = {
    "lstsq sketch": lambda A, b: gs.lstsq(A, b, method="sketch", seed=1).x,
    "lstsq precondition": lambda A, b: gs.lstsq(A, b, seed=1).x,
    "lstsq direct": lambda A, b: gs.lstsq(A, b, method="direct").x,
    "leverage_scores": lambda A, b: gs.leverage_scores(A, seed=1),
    "leverage exact": lambda A, b: gs.leverage_scores(A, exact=True),
    "leverage_sample": lambda A, b: gs.leverage_sample(A, 300, seed=1).indices,
    "lewis_weights": lambda A, b: gs.lewis_weights(A, 1, seed=1),
    "lp_regression p=1": lambda A, b: gs.lp_regression(A, b, 1, seed=1).x,
    "rank": lambda A, b: gs.rank(A, seed=1),
    "rank, wide": lambda A, b: gs.rank(A[:300].T.tocsr(), seed=1),
    "independent_rows": lambda A, b: gs.independent_rows(A, seed=1),
    "low_rank": lambda A, b: abs(gs.low_rank(A, 5, seed=1).V),
    "randomized_svd": lambda A, b: _svd_parts(gs.randomized_svd(A, 5, seed=1)),
    "tukey sampling": lambda A, b: robust.tukey_regression(A, b, 3.0, seed=1).x,
    "tukey oblivious": lambda A, b: robust.tukey_regression(A, b, 3.0, method="oblivious", seed=1).x,
    "fair.low_rank": lambda A, b: fair.low_rank([A[:10000], A[10000:]], 3, seed=1).cost,
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(SPARSE_CALLS))
def test_sparse_device_route_agrees_with_the_host_route(cupy_or_fake, name):
    """As above, with A a SciPy CSR matrix on the host and a cupyx one on the device."""
    import cupyx.scipy.sparse as csp

    cp, call = cupy_or_fake, SPARSE_CALLS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = np.asarray(to_numpy(call(_As, _b)))
        dev = np.asarray(to_numpy(call(csp.csr_matrix(_As), cp.asarray(_b))))
    assert dev.shape == host.shape
    if host.dtype.kind in "iub":
        np.testing.assert_array_equal(dev, host)
    else:
        np.testing.assert_allclose(dev, host, rtol=1e-9, atol=1e-9 * float(np.max(np.abs(host), initial=0.0)))
