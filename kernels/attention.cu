// The fp32 softmax between the attention GEMMs (RoPE + K/V-cache write: rope_part_k in skinny.cu).

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
