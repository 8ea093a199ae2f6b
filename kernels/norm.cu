// Row norms. One block per row; the row is staged in dynamic shared memory (width floats).
// Scales (LayerNorm gamma/beta, Gemma (1 + w)) are folded into the next GEMM's weights on the
// host, so these kernels only normalise.

// LayerNorm without affine: y = (x - mean) / sqrt(var + eps), fp32 statistics.
extern "C" __global__ void layernorm_k(const bf16_t* __restrict__ x, bf16_t* __restrict__ y,
                                       int width, float eps) {
    extern __shared__ float row[];
    __shared__ float red[32];
    const bf16_t* xr = x + (size_t)blockIdx.x * width;
    float s = 0.f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = b2f(xr[i]);
        row[i] = v;
        s += v;
    }
    const float mean = block_sum(s, red) / (float)width;
    float q = 0.f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float d = row[i] - mean;
        q += d * d;
    }
    const float var = block_sum(q, red) / (float)width;
    const float r = rsqrtf(var + eps);
    bf16_t* yr = y + (size_t)blockIdx.x * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) yr[i] = f2b((row[i] - mean) * r);
}

// Gemma RMSNorm without the (1 + w) scale: y = x * rsqrt(mean(x^2) + eps).
extern "C" __global__ void rmsnorm_k(const bf16_t* __restrict__ x, bf16_t* __restrict__ y,
                                     int width, float eps) {
    extern __shared__ float row[];
    __shared__ float red[32];
    const bf16_t* xr = x + (size_t)blockIdx.x * width;
    float s = 0.f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = b2f(xr[i]);
        row[i] = v;
        s += v * v;
    }
    const float ms = block_sum(s, red) / (float)width;
    const float r = rsqrtf(ms + eps);
    bf16_t* yr = y + (size_t)blockIdx.x * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) yr[i] = f2b(row[i] * r);
}
