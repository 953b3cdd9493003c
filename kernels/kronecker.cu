// One-pass Kronecker CountSketch: out (M x d) += (S_1 (x) ... (x) S_q)[:, col0:col0+n] @ B.
// Global column j of the product has multi-index (j_1, ..., j_q) in numpy.kron (C) order;
// its bucket is the C-order combination of the factor buckets h_t(j_t), its sign the
// product of the factor signs.  Each factor's hash is its own CountSketch (nnz = 1).
#include "philox.cuh"

#define GS_KRON_MAX 8

template <typename T>
__global__ void kron_countsketch(const T *__restrict__ B, long long n, int d, long long s0,
                                 long long s1, long long col0, int q,
                                 const long long *__restrict__ dims, const int *__restrict__ ms,
                                 const unsigned int *__restrict__ keys, unsigned int stream,
                                 T *__restrict__ out) {
    long long fdim[GS_KRON_MAX]; int fm[GS_KRON_MAX]; unsigned int fk0[GS_KRON_MAX], fk1[GS_KRON_MAX];
#pragma unroll
    for (int t = 0; t < GS_KRON_MAX; ++t) {
        if (t < q) { fdim[t] = dims[t]; fm[t] = ms[t]; fk0[t] = keys[2 * t]; fk1[t] = keys[2 * t + 1]; }
    }
    const long long step = (long long)gridDim.x * blockDim.y;
    for (long long i = (long long)blockIdx.x * blockDim.y + threadIdx.y; i < n; i += step) {
        long long rest = col0 + i, bucket = 0, stride = 1;
        int sign = 1;
#pragma unroll
        for (int t = GS_KRON_MAX - 1; t >= 0; --t) {
            if (t < q) {
                const long long jt = rest % fdim[t];
                rest /= fdim[t];
                int b, s;
                gs_bucket_sign((unsigned long long)jt, 0, 1, fm[t], fk0[t], fk1[t], stream, b, s);
                bucket += (long long)b * stride;
                stride *= fm[t];
                sign *= s;
            }
        }
        const T *a = B + i * s0;
        T *o = out + bucket * d;
        for (int c = threadIdx.x; c < d; c += blockDim.x) {
            const T v = a[c * s1];
            atomicAdd(o + c, sign > 0 ? v : -v);
        }
    }
}
