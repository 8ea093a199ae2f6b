// Row norms of the fp32 residual stream, bf16 output. One block per row; the row is staged in
// dynamic shared memory (width floats). The affine part (LayerNorm gamma/beta, Gemma (1 + w))
// is applied here in fp32 and the result rounded once, as openpi does, so the following
// GEMM's weights stay exactly the checkpoint's bf16 values.

// LayerNorm: y = (x - mean) / sqrt(var + eps) * gamma + beta, fp32 statistics.
extern "C" __global__ void layernorm_k(const float* __restrict__ x, bf16_t* __restrict__ y,
                                       int width, float eps, const float* __restrict__ gamma,
                                       const float* __restrict__ beta) {
    extern __shared__ float row[];
    __shared__ float red[32];
    const float* xr = x + (size_t)blockIdx.x * width;
    float s = 0.f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = xr[i];
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
    for (int i = threadIdx.x; i < width; i += blockDim.x) yr[i] = f2b((row[i] - mean) * r * gamma[i] + beta[i]);
}

// Gemma RMSNorm: y = x * rsqrt(mean(x^2) + eps) * scale, scale = (1 + w) precomputed in f32.
extern "C" __global__ void rmsnorm_k(const float* __restrict__ x, bf16_t* __restrict__ y,
                                     int width, float eps, const float* __restrict__ scale) {
    extern __shared__ float row[];
    __shared__ float red[32];
    const float* xr = x + (size_t)blockIdx.x * width;
    float s = 0.f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = xr[i];
        row[i] = v;
        s += v * v;
    }
    const float ms = block_sum(s, red) / (float)width;
    const float r = rsqrtf(ms + eps);
    bf16_t* yr = y + (size_t)blockIdx.x * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) yr[i] = f2b(row[i] * r * scale[i]);
}
