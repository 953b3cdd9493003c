// Kronecker products, never formed.
//
// kron_hash_sketch: one pass, out (M x d) += (S_1 (x) ... (x) S_q)[:, col0:col0+n] @ B for
// hashing factors (CountSketch: nnz_t = 1; SparseSign: nnz_t nonzeros +-1/sqrt(nnz_t)).
// Global column j has multi-index (j_1, ..., j_q) in numpy.kron (C) order.  Its nonzeros are
// every combination (k_1, ..., k_q) of factor nonzeros: bucket = C-order combination of the
// factor buckets h_t(j_t, k_t), sign = product of the factor signs, value scale = prod_t
// 1/sqrt(nnz_t).  Factor hashes are computed once per row and kept in registers/local memory.
//
// kron_rows: out (r x D) with row i = (A_1 (x) ... (x) A_q)[idx[i], :], a gather that forms
// the sampled rows of the product on the fly from the factors (packed one after another,
// each C-contiguous).
#include "philox.cuh"

#define GS_KRON_MAX 8
#define GS_KRON_HASHES 64

template <typename T>
__global__ void kron_hash_sketch(const T *__restrict__ B, long long n, int d, long long s0,
                                 long long s1, long long col0, int q,
                                 const long long *__restrict__ dims, const int *__restrict__ ms,
                                 const int *__restrict__ nnzs, const unsigned int *__restrict__ streams,
                                 const unsigned int *__restrict__ keys, T scale,
                                 T *__restrict__ out) {
    long long fdim[GS_KRON_MAX]; int fm[GS_KRON_MAX], fz[GS_KRON_MAX];
    unsigned int fk0[GS_KRON_MAX], fk1[GS_KRON_MAX], fs[GS_KRON_MAX];
    int combos = 1;
#pragma unroll
    for (int t = 0; t < GS_KRON_MAX; ++t) {
        if (t < q) {
            fdim[t] = dims[t]; fm[t] = ms[t]; fz[t] = nnzs[t]; fs[t] = streams[t];
            fk0[t] = keys[2 * t]; fk1[t] = keys[2 * t + 1]; combos *= fz[t];
        }
    }
    const long long step = (long long)gridDim.x * blockDim.y;
    for (long long i = (long long)blockIdx.x * blockDim.y + threadIdx.y; i < n; i += step) {
        // hb/hs hold factor t's nonzeros at offset off[t]; stride[t] is its C-order weight.
        int hb[GS_KRON_HASHES]; signed char hs[GS_KRON_HASHES];
        int off[GS_KRON_MAX]; long long stride[GS_KRON_MAX];
        long long rest = col0 + i, st = 1;
        int pos = 0;
#pragma unroll
        for (int t = GS_KRON_MAX - 1; t >= 0; --t) {
            if (t < q) {
                const long long jt = rest % fdim[t];
                rest /= fdim[t];
                off[t] = pos; stride[t] = st; st *= fm[t];
                for (int k = 0; k < fz[t]; ++k, ++pos) {
                    int b, s;
                    gs_bucket_sign((unsigned long long)jt, k, fz[t], fm[t], fk0[t], fk1[t], fs[t], b, s);
                    hb[pos] = b; hs[pos] = (signed char)s;
                }
            }
        }
        const T *a = B + i * s0;
        for (int c = 0; c < combos; ++c) {
            long long bucket = 0;
            int sign = 1, r = c;
            for (int t = q - 1; t >= 0; --t) {
                const int k = r % fz[t];
                r /= fz[t];
                bucket += (long long)hb[off[t] + k] * stride[t];
                sign *= hs[off[t] + k];
            }
            T *o = out + bucket * d;
            const T sv = sign > 0 ? scale : -scale;
            for (int col = threadIdx.x; col < d; col += blockDim.x) atomicAdd(o + col, sv * a[col * s1]);
        }
    }
}

template <typename T>
__global__ void kron_rows(const T *__restrict__ packed, const long long *__restrict__ offsets,
                          const long long *__restrict__ nrows, const int *__restrict__ ncols, int q,
                          const long long *__restrict__ idx, long long r, long long D,
                          T *__restrict__ out) {
    const long long total = r * D;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long i = e / D;
        long long col = e - i * D, row = idx[i];
        long long pos[GS_KRON_MAX];
        for (int t = q - 1; t >= 0; --t) {
            const long long it = row % nrows[t], jt = col % ncols[t];
            row /= nrows[t]; col /= ncols[t];
            pos[t] = offsets[t] + it * ncols[t] + jt;
        }
        // Multiply in factor order, ((a_1 a_2) a_3)..., as numpy.kron and the CPU twin do,
        // so the two agree to the bit.
        T v = packed[pos[0]];
        for (int t = 1; t < q; ++t) v *= packed[pos[t]];
        out[e] = v;
    }
}
