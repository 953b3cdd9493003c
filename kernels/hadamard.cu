// Walsh-Hadamard transform (unnormalised) along axis 0 of X (L x d, C order), L = 2^k,
// one radix-2 stage per launch: rows i and i + h (i mod 2h < h) become (a + b, a - b).
// CPU twin: gpusketch/_kernels.py (_fwht_cpu).
template <typename T>
__global__ void fwht_stage(T *__restrict__ X, long long L, int d, long long h) {
    const long long total = (L >> 1) * d;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
        const long long p = e / d;
        const int c = (int)(e - p * d);
        const long long i = (p / h) * 2 * h + (p % h);
        T *x = X + i * d + c, *y = x + h * d;
        const T a = *x, b = *y;
        *x = a + b;
        *y = a - b;
    }
}

// Several stages at once in shared memory: each block owns `tile_rows` = 2^log_tile
// consecutive rows of a strip of blockDim.x columns and applies stages h = 1 .. tile_rows/2
// there, reading and writing X once.  threadIdx.x walks columns, so accesses coalesce.
template <typename T>
__global__ void fwht_local(T *__restrict__ X, long long L, int d, int log_tile) {
    extern __shared__ unsigned char gs_smem[];
    T *tile = reinterpret_cast<T *>(gs_smem);
    const int tile_rows = 1 << log_tile;
    const int cx = blockDim.x, tx = threadIdx.x;
    const long long row0 = (long long)blockIdx.x * tile_rows;
    const int c = blockIdx.y * cx + tx;
    const bool active = c < d;
    for (int r = threadIdx.y; r < tile_rows; r += blockDim.y)
        tile[r * cx + tx] = active ? X[(row0 + r) * d + c] : T(0);
    __syncthreads();
    for (int h = 1; h < tile_rows; h <<= 1) {
        for (int p = threadIdx.y; p < (tile_rows >> 1); p += blockDim.y) {
            const int i = (p / h) * 2 * h + (p % h);
            const T a = tile[i * cx + tx], b = tile[(i + h) * cx + tx];
            tile[i * cx + tx] = a + b;
            tile[(i + h) * cx + tx] = a - b;
        }
        __syncthreads();
    }
    if (active)
        for (int r = threadIdx.y; r < tile_rows; r += blockDim.y) X[(row0 + r) * d + c] = tile[r * cx + tx];
}
