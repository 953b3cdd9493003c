// Scatter-add kernels for hashing sketches (CountSketch: nnz = 1, SparseSign/OSNAP:
// nnz >= 1).  Row i of the input is column j = col0 + i of S; its nnz (bucket, sign)
// pairs are recomputed from Philox in the kernel, so no n-length hash array exists.
// CPU twins: gpusketch/_kernels.py (_hash_sketch_dense_cpu and friends).
#include "philox.cuh"

// out (m x d, C order) += S[:, col0:col0+n] @ A, A read through element strides (s0, s1).
// Block (32, warps): each warp takes tiles of 32 rows.  Lane l hashes row l of the tile
// (one Philox per row, not one per thread and row: on narrow A, d <= 64, redundant
// hashing was the limit), then the (bucket, sign) pairs are broadcast with shuffles
// while the lanes walk the rows' columns, 32 / bx rows at a time, bx = pow2 >= d.
template <typename T>
__global__ void hash_sketch_rowmajor(const T *__restrict__ A, long long n, int d, long long s0,
                                     long long s1, long long col0, int m, int nnz, T scale,
                                     unsigned int k0, unsigned int k1, unsigned int stream,
                                     T *__restrict__ out) {
    const int lane = threadIdx.x;
    int bx = 1;
    while (bx < d && bx < 32) bx <<= 1;
    const int per_iter = 32 / bx, sub = lane / bx, c0 = lane % bx;
    const long long tiles = (n + 31) / 32;
    const long long step = (long long)gridDim.x * blockDim.y;
    for (long long tile = (long long)blockIdx.x * blockDim.y + threadIdx.y; tile < tiles; tile += step) {
        const long long base = tile * 32;
        const int rows = (int)(n - base < 32 ? n - base : 32);
        for (int t = 0; t < nnz; ++t) {
            int b = 0, s = 1;
            if (lane < rows)
                gs_bucket_sign((unsigned long long)(col0 + base + lane), t, nnz, m, k0, k1, stream, b, s);
            for (int r0 = 0; r0 < rows; r0 += per_iter) {  // uniform across the warp
                const int r = r0 + sub;
                const int br = __shfl_sync(0xffffffffu, b, r & 31);
                const int sr = __shfl_sync(0xffffffffu, s, r & 31);
                if (r < rows) {
                    const T f = sr > 0 ? scale : -scale;
                    const T *a = A + (base + r) * s0;
                    T *o = out + (long long)br * d;
                    for (int c = c0; c < d; c += bx) atomicAdd(o + c, f * a[c * s1]);
                }
            }
        }
    }
}

// Same map for A whose columns are contiguous (Fortran order) or for vectors:
// consecutive threads take consecutive rows, so reads down a column coalesce.
template <typename T>
__global__ void hash_sketch_colmajor(const T *__restrict__ A, long long n, int d, long long s0,
                                     long long s1, long long col0, int m, int nnz, T scale,
                                     unsigned int k0, unsigned int k1, unsigned int stream,
                                     T *__restrict__ out) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        for (int t = 0; t < nnz; ++t) {
            int b, s;
            gs_bucket_sign((unsigned long long)(col0 + i), t, nnz, m, k0, k1, stream, b, s);
            const T f = s > 0 ? scale : -scale;
            const T *a = A + i * s0;
            T *o = out + (long long)b * d;
            for (int c = 0; c < d; ++c) atomicAdd(o + c, f * a[c * s1]);
        }
    }
}

// out (m x d) += S[:, col0:col0+n] @ A for A in CSR (n x d); one warp per row.
template <typename T, typename I>
__global__ void hash_sketch_csr(const I *__restrict__ indptr, const I *__restrict__ indices,
                                const T *__restrict__ data, long long n, int d, long long col0, int m,
                                int nnz, T scale, unsigned int k0, unsigned int k1,
                                unsigned int stream, T *__restrict__ out) {
    const int lane = threadIdx.x & 31;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; i < n; i += warps) {
        const long long p0 = indptr[i], p1 = indptr[i + 1];
        for (int t = 0; t < nnz; ++t) {
            int b, s;
            gs_bucket_sign((unsigned long long)(col0 + i), t, nnz, m, k0, k1, stream, b, s);
            const T f = s > 0 ? scale : -scale;
            T *o = out + (long long)b * d;
            for (long long p = p0 + lane; p < p1; p += 32) atomicAdd(o + indices[p], f * data[p]);
        }
    }
}

// Adjoint: out (n x d, C order) = S[:, col0:col0+n]^T @ Y, Y (m x d, C order).  A gather.
template <typename T>
__global__ void hash_adjoint(const T *__restrict__ Y, int m, int d, long long n, long long col0,
                             int nnz, T scale, unsigned int k0, unsigned int k1, unsigned int stream,
                             T *__restrict__ out) {
    const long long total = n * d;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
        const long long i = e / d;
        const int c = (int)(e - i * d);
        T acc = 0;
        for (int t = 0; t < nnz; ++t) {
            int b, s;
            gs_bucket_sign((unsigned long long)(col0 + i), t, nnz, m, k0, k1, stream, b, s);
            const T v = Y[(long long)b * d + c];
            acc += s > 0 ? v : -v;
        }
        out[e] = acc * scale;
    }
}

// The (bucket, sign) pairs themselves, for tests and for todense(): (n x nnz) each.
__global__ void hash_values(long long col0, long long n, int m, int nnz, unsigned int k0,
                            unsigned int k1, unsigned int stream, long long *__restrict__ buckets,
                            signed char *__restrict__ signs) {
    const long long total = n * nnz;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
        const long long i = e / nnz;
        const int t = (int)(e - i * nnz);
        int b, s;
        gs_bucket_sign((unsigned long long)(col0 + i), t, nnz, m, k0, k1, stream, b, s);
        buckets[e] = b;
        signs[e] = (signed char)s;
    }
}

// Raw Philox blocks, for the known-answer test: ctr (count x 4), out (count x 4).
__global__ void philox_blocks(const unsigned int *__restrict__ ctr, unsigned int k0, unsigned int k1,
                              long long count, unsigned int *__restrict__ out) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < count; e += step) {
        const gs_u32x4 v = gs_philox4x32_10(
            gs_u32x4{ctr[4 * e], ctr[4 * e + 1], ctr[4 * e + 2], ctr[4 * e + 3]}, k0, k1);
        out[4 * e] = v.x; out[4 * e + 1] = v.y; out[4 * e + 2] = v.z; out[4 * e + 3] = v.w;
    }
}

// Bucket-sorted variant for wide A: the n * nnz (row, sign) entries are sorted by
// bucket beforehand (entry k has row order[k] / nnz and sign sgn[k]; bucket b owns
// entries start[b] .. start[b+1]-1).  Block (b, column tile) sums its bucket's rows
// with no atomics: each output element has exactly one writer, so the result is
// deterministic (bit-reproducible run to run) and A is read once, a row at a time.
template <typename T>
__global__ void hash_sketch_sorted(const T *__restrict__ A, int d, long long s0, long long s1,
                                   int nnz, T scale, const long long *__restrict__ order,
                                   const signed char *__restrict__ sgn,
                                   const long long *__restrict__ start, T *__restrict__ out) {
    const int b = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= d) return;
    const long long k0 = start[b], k1 = start[b + 1];
    T acc0 = 0, acc1 = 0;
    long long k = k0;
    for (; k + 1 < k1; k += 2) {  // two independent loads in flight
        const T v0 = A[(order[k] / nnz) * s0 + (long long)c * s1];
        const T v1 = A[(order[k + 1] / nnz) * s0 + (long long)c * s1];
        acc0 += sgn[k] > 0 ? v0 : -v0;
        acc1 += sgn[k + 1] > 0 ? v1 : -v1;
    }
    if (k < k1) {
        const T v = A[(order[k] / nnz) * s0 + (long long)c * s1];
        acc0 += sgn[k] > 0 ? v : -v;
    }
    out[(long long)b * d + c] += (acc0 + acc1) * scale;
}

// Multi-level CountSketch (the oblivious Tukey sketch): column j of S has one
// nonzero per level t = 0 .. levels-1 that j survives, at row t*r + bucket, laid out
// as a SparseSign with nnz = levels in m = levels*r rows (so level t's bucket is
// nonzero t's), scale 1.  Column j survives level t when its uniform
// u_j = (h_j + 1/2) / 2^30 (h_j a hash word of stream ustream under key (u0, u1),
// exactly as _kernels.uniforms) is below thresh[t] (thresh[0] > 1: level 0 keeps
// all).  The levels are nested, so a warp stops once none of its rows survives.
// Same tiling as hash_sketch_rowmajor; A is read once, whatever the levels.
template <typename T>
__global__ void hash_sketch_levels(const T *__restrict__ A, long long n, int d, long long s0,
                                   long long s1, long long col0, int r, int levels,
                                   const double *__restrict__ thresh, unsigned int k0,
                                   unsigned int k1, unsigned int stream, unsigned int u0,
                                   unsigned int u1, unsigned int ustream, T *__restrict__ out) {
    const int lane = threadIdx.x;
    int bx = 1;
    while (bx < d && bx < 32) bx <<= 1;
    const int per_iter = 32 / bx, sub = lane / bx, c0 = lane % bx;
    const int m = levels * r;
    const long long tiles = (n + 31) / 32;
    const long long step = (long long)gridDim.x * blockDim.y;
    for (long long tile = (long long)blockIdx.x * blockDim.y + threadIdx.y; tile < tiles; tile += step) {
        const long long base = tile * 32;
        const int rows = (int)(n - base < 32 ? n - base : 32);
        double u = 2.0;
        if (lane < rows) {
            int hb, hs;
            gs_bucket_sign((unsigned long long)(col0 + base + lane), 0, 1, 1 << 30, u0, u1, ustream, hb, hs);
            u = ((double)hb + 0.5) / 1073741824.0;
        }
        for (int t = 0; t < levels; ++t) {
            int b = -1, s = 1;
            if (lane < rows && u < thresh[t])
                gs_bucket_sign((unsigned long long)(col0 + base + lane), t, levels, m, k0, k1, stream, b, s);
            if (__all_sync(0xffffffffu, b < 0)) break;  // warp-uniform: deeper levels are subsets
            for (int r0 = 0; r0 < rows; r0 += per_iter) {
                const int rr = r0 + sub;
                const int br = __shfl_sync(0xffffffffu, b, rr & 31);
                const int sr = __shfl_sync(0xffffffffu, s, rr & 31);
                if (rr < rows && br >= 0) {
                    const T *a = A + (base + rr) * s0;
                    T *o = out + (long long)br * d;
                    for (int c = c0; c < d; c += bx) atomicAdd(o + c, sr > 0 ? a[c * s1] : -a[c * s1]);
                }
            }
        }
    }
}
