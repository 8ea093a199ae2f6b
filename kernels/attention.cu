// Attention pieces around the cuBLASLt GEMMs: RoPE + K/V-cache write, and the fp32 softmax.

// Split-half RoPE (openpi `_apply_rope`) on q and k, K/V-cache write. Block (t, h): head h of
// token t (q heads, then k heads, then one block copying v). cos/sin come from a table
// [position][D/2] of float2 computed once on the host in f64.
// qkv row: [q (H*D) | k (Hkv*D) | v (Hkv*D)] with leading dimension `ld`.
// q_out: [T][H][D]; k_out / v_out: rows [T][Hkv*D] (the layer's K/V cache at the right row).
extern "C" __global__ void rope_qkv_k(const bf16_t* __restrict__ qkv, int ld,
                                      bf16_t* __restrict__ q_out, bf16_t* __restrict__ k_out,
                                      bf16_t* __restrict__ v_out, int H, int Hkv, int D, int pos0,
                                      const float2* __restrict__ table) {
    const int t = blockIdx.x, h = blockIdx.y;
    const int half = D / 2;
    const bf16_t* row = qkv + (size_t)t * ld;
    if (h == H + Hkv) {
        const bf16_t* vsrc = row + (H + Hkv) * D;
        for (int i = threadIdx.x; i < Hkv * D; i += blockDim.x) v_out[(size_t)t * Hkv * D + i] = vsrc[i];
        return;
    }
    const float2* cs = table + (size_t)(pos0 + t) * half;
    const bf16_t* src = row + h * D;  // q heads then k heads are contiguous
    bf16_t* dst = (h < H) ? (q_out + ((size_t)t * H + h) * D) : (k_out + ((size_t)t * Hkv + (h - H)) * D);
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float2 c = cs[i];
        const float x1 = b2f(src[i]), x2 = b2f(src[i + half]);
        dst[i] = f2b(x1 * c.x - x2 * c.y);
        dst[i + half] = f2b(x2 * c.x + x1 * c.y);
    }
}

#define SM_MAXC 32  // register-resident row up to 1024 keys

// Row softmax in fp32 (logits already scaled), one warp per row, probabilities stored bf16.
// Rows see the first `valid` keys; rows < masked_rows only the first masked_len (the state
// token of the suffix). Probabilities of the keys up to `len` (a multiple of 8 >= valid, so
// the following P.V GEMM gets an aligned K) are written as 0.
extern "C" __global__ void softmax_k(const float* __restrict__ s, long long lds,
                                     bf16_t* __restrict__ p, long long ldp, int rows, int len,
                                     int valid, int masked_rows, int masked_len) {
    const int r = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const int n = (r < masked_rows) ? masked_len : valid;
    const float* sr = s + (size_t)r * lds;
    bf16_t* pr = p + (size_t)r * ldp;
    if (n <= 32 * SM_MAXC) {
        // One read of the row, kept in registers.
        float v[SM_MAXC];
        float m = -3.0e38f;
#pragma unroll
        for (int c = 0; c < SM_MAXC; c++) {
            const int j = lane + c * 32;
            v[c] = (j < n) ? sr[j] : -3.0e38f;
            m = fmaxf(m, v[c]);
        }
        m = warp_max(m);
        float sum = 0.f;
#pragma unroll
        for (int c = 0; c < SM_MAXC; c++) {
            const int j = lane + c * 32;
            v[c] = (j < n) ? __expf(v[c] - m) : 0.f;
            sum += v[c];
        }
        const float inv = 1.f / warp_sum(sum);
#pragma unroll
        for (int c = 0; c < SM_MAXC; c++) {
            const int j = lane + c * 32;
            if (j < n) pr[j] = f2b(v[c] * inv);
        }
    } else {
        float m = -3.0e38f;
        for (int j = lane; j < n; j += 32) m = fmaxf(m, sr[j]);
        m = warp_max(m);
        float sum = 0.f;
        for (int j = lane; j < n; j += 32) sum += __expf(sr[j] - m);
        sum = warp_sum(sum);
        const float inv = 1.f / sum;
        for (int j = lane; j < n; j += 32) pr[j] = f2b(__expf(sr[j] - m) * inv);
    }
    for (int j = n + lane; j < len; j += 32) pr[j] = (bf16_t)0;
}
