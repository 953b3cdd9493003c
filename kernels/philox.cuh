// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC'11), bit-identical to
// gpusketch/_random.py.  No system headers: the file is compiled by NVRTC
// (CuPy RawModule) at run time and by nvcc in the test suite.
#ifndef GS_PHILOX_CUH
#define GS_PHILOX_CUH

struct gs_u32x4 { unsigned int x, y, z, w; };

__device__ __forceinline__ gs_u32x4 gs_philox4x32_10(gs_u32x4 c, unsigned int k0, unsigned int k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        const unsigned int hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        const unsigned int hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        c = gs_u32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    }
    return c;
}

__device__ __forceinline__ unsigned int gs_lane(const gs_u32x4 &v, unsigned int i) {
    return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

// Hash word g of a stream (see _random.py): counter (g>>2 lo, g>>34, stream, 0), lane g&3.
__device__ __forceinline__ unsigned int gs_hash_word(unsigned long long g, unsigned int k0,
                                                     unsigned int k1, unsigned int stream) {
    const unsigned long long q = g >> 2;
    const gs_u32x4 v = gs_philox4x32_10(
        gs_u32x4{(unsigned int)(q & 0xFFFFFFFFull), (unsigned int)(q >> 32), stream, 0u}, k0, k1);
    return gs_lane(v, (unsigned int)(g & 3ull));
}

// Bucket and sign of column j, nonzero t of a sketch with nnz nonzeros per column
// in m rows: nonzero t lives in row block [t*m/nnz, (t+1)*m/nnz).
__device__ __forceinline__ void gs_bucket_sign(unsigned long long j, int t, int nnz, int m,
                                               unsigned int k0, unsigned int k1, unsigned int stream,
                                               int &bucket, int &sign) {
    const unsigned int w = gs_hash_word(j * (unsigned long long)nnz + (unsigned long long)t, k0, k1, stream);
    const long long lo = (long long)t * m / nnz, hi = (long long)(t + 1) * m / nnz;
    bucket = (int)(lo + (long long)(((unsigned long long)(w >> 1) * (unsigned long long)(hi - lo)) >> 31));
    sign = (w & 1u) ? -1 : 1;
}

#endif  // GS_PHILOX_CUH
