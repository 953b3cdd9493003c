"""Random layer: counter-based Philox4x32-10 (Salmon et al., SC'11).

Every random quantity in gpusketch is a pure function of (seed, stream,
index): the counter is built from the index being generated, the key from
the 64-bit seed.  The same function is implemented here in vectorised NumPy
and in ``kernels/philox.cuh`` for CUDA; the two are bit-identical and both
pass Random123's known-answer vectors.

Layout used by the sketch operators (``stream`` separates operator kinds so
that, e.g., a CountSketch and a SparseSign with the same seed are unrelated):

* hash words: word ``g`` (a 32-bit value) lives in counter
  ``(g >> 2 mod 2**32, g >> 34, stream, 0)``, output lane ``g & 3``.  The
  hash of column ``j``, nonzero ``t`` of a sketch with ``nnz`` nonzeros per
  column is word ``g = j * nnz + t``; its low bit is the sign and its upper 31
  bits the bucket (Lemire's multiply-shift, ``(w >> 1) * size >> 31``).
* normal deviates: entry ``(i, j)`` uses counter ``(j mod 2**32, j >> 32,
  stream, i >> 2)``; lanes ``(0, 1)`` and ``(2, 3)`` each feed one Box–Muller
  pair, ``i & 1`` picks cosine or sine.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "philox4x32",
    "hash_words",
    "hash_word_chunks",
    "hash_words_at",
    "hash_word_blocks",
    "normal_block",
    "NormalWork",
    "uniform_u64",
    "STREAM_COUNTSKETCH",
    "STREAM_SPARSESIGN",
    "STREAM_GAUSSIAN",
    "STREAM_SRHT_SIGNS",
    "STREAM_SRHT_ROWS",
    "split_seed",
    "derive_seed",
    "STREAM_UNIFORM",
    "STREAM_LEVELS",
    "STREAM_LEVELS_UNIFORM",
]

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85

STREAM_COUNTSKETCH = 1
STREAM_SPARSESIGN = 2
STREAM_GAUSSIAN = 3
STREAM_SRHT_SIGNS = 4
STREAM_SRHT_ROWS = 5
STREAM_UNIFORM = 6
STREAM_LEVELS = 7  # MultiLevelCountSketch buckets and signs
STREAM_LEVELS_UNIFORM = 8  # MultiLevelCountSketch: which levels each column survives

_MASK = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
# Hashing is done in blocks that stay in L2: ~4x faster than whole-array passes.
_BLOCK = 1 << 15


def derive_seed(seed: int, index: int) -> int:
    """The ``index``-th child seed of ``seed``: one Philox block keyed by the seed.

    Algorithms that draw several sketches from one user seed give each its own
    child, so the sketches are independent and the whole run replays from one int.
    """
    w = _philox_scalar((index & 0xFFFFFFFF, (index >> 32) & 0xFFFFFFFF, 0xC0FFEE, 0), split_seed(seed))
    return w[0] | (w[1] << 32)


def _philox_scalar(ctr, key):
    """Philox4x32-10 of one counter in Python integers (no array overhead)."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        if r:
            k0 = (k0 + PHILOX_W0) & 0xFFFFFFFF
            k1 = (k1 + PHILOX_W1) & 0xFFFFFFFF
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c3 ^ k1, p0 & 0xFFFFFFFF
    return c0, c1, c2, c3


def split_seed(seed: int):
    """The Philox key ``(k0, k1)`` of a 64-bit seed (low word first)."""
    return seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF


def _philox_rounds(c0, c1, c2, c3, k0, k1, p0=None, p1=None):
    """Ten Philox rounds on uint64 arrays holding 32-bit values (in place).

    ``p0`` and ``p1`` are optional scratch arrays like ``c0`` (allocated when None).
    """
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    p0 = np.empty_like(c0) if p0 is None else p0
    p1 = np.empty_like(c0) if p1 is None else p1
    for r in range(10):
        if r:
            k0 = (k0 + PHILOX_W0) & 0xFFFFFFFF
            k1 = (k1 + PHILOX_W1) & 0xFFFFFFFF
        np.multiply(c0, m0, out=p0)
        np.multiply(c2, m1, out=p1)
        # (c0, c1, c2, c3) <- (hi(p1) ^ c1 ^ k0, lo(p1), hi(p0) ^ c3 ^ k1, lo(p0))
        np.right_shift(p1, _S32, out=c0)
        np.bitwise_xor(c0, c1, out=c0)
        np.bitwise_xor(c0, np.uint64(k0), out=c0)
        np.bitwise_and(p1, _MASK, out=c1)
        np.right_shift(p0, _S32, out=c2)
        np.bitwise_xor(c2, c3, out=c2)
        np.bitwise_xor(c2, np.uint64(k1), out=c2)
        np.bitwise_and(p0, _MASK, out=c3)
    return c0, c1, c2, c3


def philox4x32(counter, key):
    """Philox4x32-10 on NumPy arrays.

    Parameters
    ----------
    counter : array_like of uint32, shape (..., 4)
    key : array_like of uint32, shape (2,)

    Returns
    -------
    numpy.ndarray of uint32, shape (..., 4)
    """
    ctr = np.asarray(counter, dtype=np.uint64)
    if ctr.shape[-1:] != (4,):
        raise ValueError(f"counter must have a trailing dimension of 4, got shape {ctr.shape}")
    k0, k1 = (int(k) & 0xFFFFFFFF for k in key)
    flat = ctr.reshape(-1, 4)
    c = [np.ascontiguousarray(flat[:, i]) for i in range(4)]
    out = _philox_rounds(*c, k0, k1)
    return np.stack(out, axis=-1).astype(np.uint32).reshape(ctr.shape)


def hash_word_chunks(g0: int, count: int, seed: int, stream: int, chunk: int = 4 * _BLOCK):
    """Hash words ``g0 .. g0+count-1`` in consecutive chunks of at most ``chunk`` words.

    Yields ``(a, b, words)``: ``words`` holds words ``g0+a .. g0+b-1`` (uint64
    holding 32-bit values) in a fresh buffer small enough to stay in cache, so
    a caller can finish its work on a chunk (bucket and sign arithmetic) before
    the next one is hashed instead of streaming whole arrays through memory.
    """
    k0, k1 = split_seed(seed)
    for a in range(0, count, chunk):
        b = min(count, a + chunk)
        first, last = (g0 + a) >> 2, (g0 + b - 1) >> 2
        ctr = np.arange(first, last + 1, dtype=np.uint64)
        nc = ctr.size
        lanes = _philox_rounds(ctr & _MASK, ctr >> _S32, np.full(nc, stream, dtype=np.uint64),
                               np.zeros(nc, dtype=np.uint64), k0, k1)
        words = np.empty((nc, 4), dtype=np.uint64)
        for lane in range(4):
            words[:, lane] = lanes[lane]
        off = (g0 + a) - 4 * first
        yield a, b, words.reshape(-1)[off : off + (b - a)]


def hash_words(g0: int, count: int, seed: int, stream: int) -> np.ndarray:
    """Hash words ``g0 .. g0+count-1`` (uint64 array holding 32-bit values)."""
    out = np.empty(count, dtype=np.uint64)
    for a, b, words in hash_word_chunks(g0, count, seed, stream):
        out[a:b] = words
    return out


def hash_words_at(g: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Hash words at arbitrary indices ``g`` (uint64 array holding 32-bit values).

    The same words as ``hash_words``, one Philox block per index (in blocks
    that stay in cache): cheaper than a contiguous range when only a sparse
    subset of it is wanted.
    """
    g = np.asarray(g, dtype=np.uint64).ravel()
    out = np.empty(g.size, dtype=np.uint64)
    for a in range(0, g.size, _BLOCK):  # in blocks: the four lanes of a block stay in cache
        gb = g[a : a + _BLOCK]
        lanes = hash_word_blocks(gb >> np.uint64(2), seed, stream)
        out[a : a + gb.size] = np.take_along_axis(lanes, (gb & np.uint64(3)).astype(np.intp)[:, None], axis=1)[:, 0]
    return out


def hash_word_blocks(q: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """The four hash words ``4q .. 4q+3`` of each Philox block ``q``: shape ``(len(q), 4)``.

    One Philox evaluation serves four consecutive words: for index sets made
    of aligned runs of four this is a quarter of ``hash_words_at``'s work.
    """
    q = np.asarray(q, dtype=np.uint64).ravel()
    out = np.empty((q.size, 4), dtype=np.uint64)
    k0, k1 = split_seed(seed)
    for a in range(0, q.size, _BLOCK):
        qb = q[a : a + _BLOCK]
        lanes = _philox_rounds(qb & _MASK, qb >> _S32, np.full(qb.size, stream, dtype=np.uint64),
                               np.zeros(qb.size, dtype=np.uint64), k0, k1)
        for lane in range(4):
            out[a : a + qb.size, lane] = lanes[lane]
    return out


def uniform_u64(index0: int, count: int, seed: int, stream: int) -> np.ndarray:
    """``count`` uniform 64-bit integers (words 0 and 1 of counters index0..)."""
    k0, k1 = split_seed(seed)
    ctr = np.arange(index0, index0 + count, dtype=np.uint64)
    c0, c1 = ctr & _MASK, ctr >> _S32
    c2 = np.full(count, stream, dtype=np.uint64)
    c3 = np.zeros(count, dtype=np.uint64)
    w0, w1, _, _ = _philox_rounds(c0, c1, c2, c3, k0, k1)
    return (w0 << _S32) | w1


@functools.lru_cache(maxsize=None)
def _turn_tables():
    """``e^{2πi·w/2^32}`` factors for the bit fields of a 32-bit w: ``(T20, T10, T0)`` with
    ``T_s[k] = e^{2πi·k·2^s/2^32}`` for the fields ``w >> 20`` (12 bits), ``(w >> 10) & 1023``
    and ``w & 1023``; each entry rounded once from extended precision where NumPy has it."""
    ld = np.longdouble
    turn = 8 * np.arctan(ld(1))  # 2π in the platform's long double
    tables = []
    for bits, shift in ((12, 20), (10, 10), (10, 0)):
        theta = turn * np.arange(1 << bits, dtype=ld) * ld(2.0) ** (shift - 32)
        T = np.cos(theta).astype(np.float64) + 1j * np.sin(theta).astype(np.float64)
        T.setflags(write=False)
        tables.append(T)
    return tuple(tables)


class NormalWork:
    """Scratch buffers that ``normal_block`` reuses from call to call (one per thread).

    A CPU Gaussian sketch generates S in blocks of a few MiB.  Fresh temporaries
    for each block cost a page fault per 4 KiB (NumPy's large arrays come from
    mmap, or from a heap that glibc trims between blocks): about 10 MB of them a
    block.  On the 2-core development VM, one thread generating 4·10⁷ entries
    took 1.26 s in fresh blocks (308 000 page faults) and 0.63 s for the whole
    sketch with a workspace (2 000 faults).  Not thread-safe: each thread
    needs its own.
    """

    def __init__(self):
        self._buffers = {}

    def buffer(self, name, shape, dtype):
        """An uninitialised array ``shape`` of ``dtype``, the same memory on each call
        (it grows when a larger one is asked for)."""
        dtype = np.dtype(dtype)
        size = 1
        for k in shape:
            size *= int(k)
        b = self._buffers.get(name)
        if b is None or b.size < size or b.dtype != dtype:
            b = self._buffers[name] = np.empty(max(size, 1), dtype=dtype)
        return b[:size].reshape(shape)


def _unit_turn(w, work=None):
    """``cos`` and ``sin`` of ``2π·w/2^32`` for uint64 ``w`` holding 32-bit values, as one
    complex array (in ``work`` when given): the product of three table entries (see
    ``normal_block``)."""
    work = NormalWork() if work is None else work
    T20, T10, T0 = _turn_tables()
    t = work.buffer("turn_index", w.shape, np.uint64)
    index = t.view(np.int64)  # the fields are below 2^12: the same values as int64
    e = work.buffer("turn", w.shape, np.complex128)
    f = work.buffer("turn_factor", w.shape, np.complex128)
    # mode="clip": the indices are in range, and take's default mode="raise" buffers out.
    np.right_shift(w, np.uint64(20), out=t)
    np.take(T20, index, out=e, mode="clip")
    np.right_shift(w, np.uint64(10), out=t)
    np.bitwise_and(t, np.uint64(1023), out=t)
    np.take(T10, index, out=f, mode="clip")
    e *= f
    np.bitwise_and(w, np.uint64(1023), out=t)
    np.take(T0, index, out=f, mode="clip")
    e *= f
    return e


def normal_block(m: int, j0: int, c: int, seed: int, stream: int, dtype=np.float64, work=None) -> np.ndarray:
    """Standard normal entries ``(i, j)`` for ``i < m``, ``j0 <= j < j0 + c``.

    Box–Muller in float64 from the counter layout in the module docstring,
    returned as an ``(m, c)`` array of ``dtype``: with ``w1, w2`` the pair's
    two words, ``r = sqrt(−2 log((w1 + 1)/2^32))`` times ``cos`` or ``sin`` of
    ``θ = 2π w2/2^32``.  With ``work`` (a ``NormalWork``) every buffer, the
    result included, is the workspace's: the result is valid until its next use.

    The angle is an exact fraction of a turn, so ``e^{iθ}`` is the product of
    three table entries, one per bit field of w2 (12, 10 and 10 bits; 6144
    entries, 96 KiB, rounded from long double).  LibM's float64 cos and sin
    cost about 17 ns an entry here, more than Philox and everything else
    together: with the tables an entry costs 15 ns instead of 31 (2-core
    box, 400 × 655 blocks).  The result is also closer to the true value:
    largest error 2.5e-16 over 2·10⁵ angles against long double, where
    ``cos(fl(2π·u))`` had 6.4e-16 (the rounding of θ).  The CUDA kernel keeps
    ``cos(2π u)``; the two agree to about 3e-15 (entries times r <= 6.7).
    """
    work = NormalWork() if work is None else work
    k0, k1 = split_seed(seed)
    nb = (m + 3) // 4
    u64 = np.uint64
    j = np.arange(j0, j0 + c, dtype=u64)
    c0, c1, c2, c3 = (work.buffer(f"counter{lane}", (nb, c), u64) for lane in range(4))
    c0[...] = j & _MASK
    c1[...] = j >> _S32
    c2.fill(stream)
    c3[...] = np.arange(nb, dtype=u64)[:, None]
    w = _philox_rounds(c0.reshape(-1), c1.reshape(-1), c2.reshape(-1), c3.reshape(-1), k0, k1,
                       work.buffer("p0", (nb * c,), u64), work.buffer("p1", (nb * c,), u64))
    z = work.buffer("normal", (nb, 4, c), np.float64)
    r = work.buffer("radius", (nb * c,), np.float64)
    for pair in range(2):
        np.add(w[2 * pair], 1.0, out=r)  # exact: w < 2^32
        r *= 2.0**-32  # (0, 1]: log is finite
        np.log(r, out=r)
        r *= -2.0
        np.sqrt(r, out=r)
        e = _unit_turn(w[2 * pair + 1], work)
        np.multiply(e.real.reshape(nb, c), r.reshape(nb, c), out=z[:, 2 * pair, :])
        np.multiply(e.imag.reshape(nb, c), r.reshape(nb, c), out=z[:, 2 * pair + 1, :])
    return z.reshape(4 * nb, c)[:m].astype(dtype, copy=False)
