// Row norms of the fp32 residual stream, bf16 output, one block per row (rows are few: 51-816
// rows of 32-2048 values, so a warp per row left most SMs idle), float4 loads. The affine part
// (LayerNorm gamma/beta, Gemma (1 + w)) is applied here in fp32 and the result rounded once, as openpi
// does, so the following GEMM's weights stay exactly the checkpoint's bf16 values.
// width must be a multiple of 4. Gemma's RMSNorm is resid_rms_k (skinny.cu) with no partials.

DEV void store4(bf16_t* p, float a, float b, float c, float d) {
    uint2 u;
    u.x = (u32)f2b(a) | ((u32)f2b(b) << 16);
    u.y = (u32)f2b(c) | ((u32)f2b(d) << 16);
    *(uint2*)p = u;
}

// LayerNorm: y = (x - mean) / sqrt(var + eps) * gamma + beta, fp32 statistics (two-pass over
// registers). One block per row, 4 values per thread (blockDim >= width / 4, whole warps).
extern "C" __global__ void layernorm_k(const float* __restrict__ x, bf16_t* __restrict__ y,
                                       int width, float eps, const float* __restrict__ gamma,
                                       const float* __restrict__ beta, int rows) {
    pdl_wait();
    pdl_trigger();
    __shared__ float red[32];
    const int row = blockIdx.x, i = threadIdx.x * 4;
    if (row >= rows) return;
    const bool on = i < width;
    float4 v;
    v.x = v.y = v.z = v.w = 0.f;
    if (on) v = *(const float4*)(x + (size_t)row * width + i);
    const float mean = block_sum((v.x + v.y) + (v.z + v.w), red) / (float)width;
    const float a = v.x - mean, b = v.y - mean, c = v.z - mean, d = v.w - mean;
    const float q = on ? (a * a + b * b) + (c * c + d * d) : 0.f;
    const float r = rsqrtf(block_sum(q, red) / (float)width + eps);
    if (on) {
        const float4 g = *(const float4*)(gamma + i);
        const float4 bt = *(const float4*)(beta + i);
        store4(y + (size_t)row * width + i, a * r * g.x + bt.x, b * r * g.y + bt.y,
               c * r * g.z + bt.z, d * r * g.w + bt.w);
    }
}
