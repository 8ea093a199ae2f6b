// Row norms of the fp32 residual stream, bf16 output, one warp per row (rows are short:
// 51-816 rows of 32-2048 values), float4 loads, no shared memory. The affine part (LayerNorm
// gamma/beta, Gemma (1 + w)) is applied here in fp32 and the result rounded once, as openpi
// does, so the following GEMM's weights stay exactly the checkpoint's bf16 values.
// width must be a multiple of 4.

DEV void store4(bf16_t* p, float a, float b, float c, float d) {
    uint2 u;
    u.x = (u32)f2b(a) | ((u32)f2b(b) << 16);
    u.y = (u32)f2b(c) | ((u32)f2b(d) << 16);
    *(uint2*)p = u;
}

// LayerNorm: y = (x - mean) / sqrt(var + eps) * gamma + beta, fp32 statistics (two-pass).
extern "C" __global__ void layernorm_k(const float* __restrict__ x, bf16_t* __restrict__ y,
                                       int width, float eps, const float* __restrict__ gamma,
                                       const float* __restrict__ beta, int rows) {
    const int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * width;
    float s = 0.f;
    for (int i = lane * 4; i < width; i += 128) {
        const float4 v = *(const float4*)(xr + i);
        s += (v.x + v.y) + (v.z + v.w);
    }
    const float mean = warp_sum(s) / (float)width;
    float q = 0.f;
    for (int i = lane * 4; i < width; i += 128) {
        const float4 v = *(const float4*)(xr + i);
        const float a = v.x - mean, b = v.y - mean, c = v.z - mean, d = v.w - mean;
        q += (a * a + b * b) + (c * c + d * d);
    }
    const float r = rsqrtf(warp_sum(q) / (float)width + eps);
    bf16_t* yr = y + (size_t)row * width;
    for (int i = lane * 4; i < width; i += 128) {
        const float4 v = *(const float4*)(xr + i);
        const float4 g = *(const float4*)(gamma + i);
        const float4 b = *(const float4*)(beta + i);
        store4(yr + i, (v.x - mean) * r * g.x + b.x, (v.y - mean) * r * g.y + b.y,
               (v.z - mean) * r * g.z + b.z, (v.w - mean) * r * g.w + b.w);
    }
}

// Gemma RMSNorm: y = x * rsqrt(mean(x^2) + eps) * scale, scale = (1 + w) precomputed in f32.
extern "C" __global__ void rmsnorm_k(const float* __restrict__ x, bf16_t* __restrict__ y,
                                     int width, float eps, const float* __restrict__ scale,
                                     int rows) {
    const int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * width;
    float s = 0.f;
    for (int i = lane * 4; i < width; i += 128) {
        const float4 v = *(const float4*)(xr + i);
        s += (v.x * v.x + v.y * v.y) + (v.z * v.z + v.w * v.w);
    }
    const float r = rsqrtf(warp_sum(s) / (float)width + eps);
    bf16_t* yr = y + (size_t)row * width;
    for (int i = lane * 4; i < width; i += 128) {
        const float4 v = *(const float4*)(xr + i);
        const float4 g = *(const float4*)(scale + i);
        store4(yr + i, v.x * r * g.x, v.y * r * g.y, v.z * r * g.z, v.w * r * g.w);
    }
}
