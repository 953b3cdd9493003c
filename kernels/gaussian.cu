// Dense Gaussian block S[:, j0:j0+c] (m x c, C order), entries scale * N(0, 1) by
// Box-Muller from Philox (layout in gpusketch/_random.py).  CPU twin: _random.normal_block.
#include "philox.cuh"

template <typename T>
__global__ void gaussian_fill(T *__restrict__ S, int m, long long c, long long j0, T scale,
                              unsigned int k0, unsigned int k1, unsigned int stream) {
    const long long nb = (m + 3) / 4;
    const long long total = nb * c;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
        const long long blk = e / c, jj = e - blk * c;
        const unsigned long long j = (unsigned long long)(j0 + jj);
        const gs_u32x4 v = gs_philox4x32_10(
            gs_u32x4{(unsigned int)(j & 0xFFFFFFFFull), (unsigned int)(j >> 32), stream, (unsigned int)blk},
            k0, k1);
        const unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int pair = 0; pair < 2; ++pair) {
            const double u1 = ((double)w[2 * pair] + 1.0) * 2.3283064365386963e-10;
            const double u2 = (double)w[2 * pair + 1] * 2.3283064365386963e-10;
            const double r = sqrt(-2.0 * log(u1));
            const double t = 6.283185307179586 * u2;
            const long long i0 = blk * 4 + 2 * pair;
            if (i0 < m) S[i0 * c + jj] = (T)(scale * r * cos(t));
            if (i0 + 1 < m) S[(i0 + 1) * c + jj] = (T)(scale * r * sin(t));
        }
    }
}
