// The fp32 softmax between the attention GEMMs (RoPE + K/V-cache write: rope_part_k in skinny.cu).

#define SM_MAXC4 8  // register-resident row up to 32 lanes x 8 float4 = 1024 keys

// Row softmax in fp32 (logits already scaled), one warp per row, 4 rows per 128-thread block,
// probabilities stored bf16. Rows see the first `valid` keys; rows < masked_rows only the first
// masked_len (the state token of the suffix). Probabilities of the keys up to `len` (a multiple
// of 8 >= valid, so the following P.V GEMM gets an aligned K) are written as 0. Rows are read as
// float4 and written as 4 x bf16 (lds, ldp multiples of 8).
extern "C" __global__ void softmax_k(const float* __restrict__ s, long long lds,
                                     bf16_t* __restrict__ p, long long ldp, int rows, int len,
                                     int valid, int masked_rows, int masked_len) {
    pdl_wait();
    pdl_trigger();
    const int r = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const int n = (r < masked_rows) ? masked_len : valid;
    const float* sr = s + (size_t)r * lds;
    bf16_t* pr = p + (size_t)r * ldp;
    if (len <= 128 * SM_MAXC4) {
        // One read of the row, kept in registers.
        float4 v[SM_MAXC4];
        float m = -3.0e38f;
#pragma unroll
        for (int c = 0; c < SM_MAXC4; c++) {
            const int j = 4 * (lane + c * 32);
            v[c] = (j < n) ? *(const float4*)(sr + j) : make_float4(0.f, 0.f, 0.f, 0.f);
            v[c].x = (j < n) ? v[c].x : -3.0e38f;
            v[c].y = (j + 1 < n) ? v[c].y : -3.0e38f;
            v[c].z = (j + 2 < n) ? v[c].z : -3.0e38f;
            v[c].w = (j + 3 < n) ? v[c].w : -3.0e38f;
            m = fmaxf(m, fmaxf(fmaxf(v[c].x, v[c].y), fmaxf(v[c].z, v[c].w)));
        }
        m = warp_max(m);
        float sum = 0.f;
#pragma unroll
        for (int c = 0; c < SM_MAXC4; c++) {
            const int j = 4 * (lane + c * 32);
            v[c].x = (j < n) ? __expf(v[c].x - m) : 0.f;
            v[c].y = (j + 1 < n) ? __expf(v[c].y - m) : 0.f;
            v[c].z = (j + 2 < n) ? __expf(v[c].z - m) : 0.f;
            v[c].w = (j + 3 < n) ? __expf(v[c].w - m) : 0.f;
            sum += (v[c].x + v[c].y) + (v[c].z + v[c].w);
        }
        const float inv = 1.f / warp_sum(sum);
#pragma unroll
        for (int c = 0; c < SM_MAXC4; c++) {
            const int j = 4 * (lane + c * 32);
            if (j < len) {
                const u32 lo = (u32)f2b(v[c].x * inv) | ((u32)f2b(v[c].y * inv) << 16);
                const u32 hi = (u32)f2b(v[c].z * inv) | ((u32)f2b(v[c].w * inv) << 16);
                *(uint2*)(pr + j) = make_uint2(lo, hi);
            }
        }
        return;
    }
    float m = -3.0e38f;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, sr[j]);
    m = warp_max(m);
    float sum = 0.f;
    for (int j = lane; j < n; j += 32) sum += __expf(sr[j] - m);
    sum = warp_sum(sum);
    const float inv = 1.f / sum;
    for (int j = lane; j < n; j += 32) pr[j] = f2b(__expf(sr[j] - m) * inv);
    for (int j = n + lane; j < len; j += 32) pr[j] = (bf16_t)0;
}
