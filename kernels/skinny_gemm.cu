// EXPERIMENTAL, NOT COMPILED INTO THE ENGINE (not in src/gpu/device.rs SOURCES).
// Correct (golden rel L2 6.3e-3 / 5.3e-3 when wired in with a bf16 expert residual) but slower
// than cuBLASLt on H100: see docs/gpu-notes.md v2-v3. Kept as the starting point for the
// weight-streaming decoder GEMM.
// Weight-streaming skinny GEMM for the action expert (M = chunk + 1 <= 72 token rows).
//
// Y[m][n] = epilogue( sum_k X[m][k] * W[n][k] ), W row-major [N][K] bf16 read once.
// Each warp owns 16 weight rows (mma M side: "swap AB") and all token rows (mma N side, n8
// tiles); split-K over gridDim.y with a deterministic in-order reduction by the last warp to
// finish a tile (counter per tile, reset after use). K is walked in chunks of 64: each thread
// loads 16 contiguous k of a weight row (2 x 16 B) and the same 16 k of each token row; the
// k order inside a chunk is permuted identically for A and B, which leaves the dot products
// unchanged. The next chunk's weights are loaded before the current chunk's MMAs.
// The X chunk (all token rows x 64 k) is staged once per CTA in shared memory (double buffer).
// With one split the epilogue runs in the kernel; with several, each split writes its partial
// tile (and the token rows' partial sum of squares) to `ws` and skinny_reduce_k sums the splits
// in order (deterministic) and applies the epilogue.
// Epilogues: 0 store, 1 residual add (Y += acc), 2 GELU(tanh)(gate)*up with gate/up rows
// interleaved in blocks of 8, 3 q|k RoPE (rows of a tile = 8 dims of the first half and the same
// 8 dims of the second half of one head) + v, written to q [M][H][D], k and v rows [M][D].
// `rms` multiplies each token row by rsqrt(mean(x^2) + eps) of X (Gemma RMSNorm; the (1 + w)
// scale is folded into W), computed from the X values the kernel streams anyway.

#define SK_MAXT 9
#define SK_WARPS 4
#define SK_XP 72  // smem row pitch (64 k + 8 pad): conflict-free 16-B fragment reads
#define SK_PART (16 * 8 * SK_MAXT + 8 * SK_MAXT)

DEV void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

DEV uint4 ld_stream(const bf16_t* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

DEV float sq2(u32 w) {
    const float a = __uint_as_float(w << 16), b = __uint_as_float(w & 0xffff0000u);
    return a * a + b * b;
}

DEV void sk_epilogue(float va, float vb, int m, int tile, int g, int mode, bf16_t* Y, int ldy,
                     bf16_t* q_out, bf16_t* k_out, bf16_t* v_out, int H, int D, int pos0, float base) {
    const int n0 = tile * 16;
    bf16_t* yr = Y + (size_t)m * ldy;
    if (mode == 0) {
        yr[n0 + g] = f2b(va);
        yr[n0 + g + 8] = f2b(vb);
    } else if (mode == 1) {
        yr[n0 + g] = f2b(b2f(yr[n0 + g]) + va);
        yr[n0 + g + 8] = f2b(b2f(yr[n0 + g + 8]) + vb);
    } else if (mode == 2) {
        yr[tile * 8 + g] = f2b(gelu_tanh(va) * vb);
    } else {
        const int half = D / 2, rtph = half / 8, nrope = (H + 1) * rtph;
        if (tile < nrope) {
            const int head = tile / rtph, d1 = (tile % rtph) * 8 + g;
            const float ts = powf(base, (2.f * (float)d1) / (float)D);
            float sn, cs;
            sincosf((float)(pos0 + m) / ts, &sn, &cs);
            bf16_t* dst = (head < H) ? (q_out + ((size_t)m * H + head) * D) : (k_out + (size_t)m * D);
            dst[d1] = f2b(va * cs - vb * sn);
            dst[d1 + half] = f2b(vb * cs + va * sn);
        } else {
            const int d = (tile - nrope) * 16 + g;
            v_out[(size_t)m * D + d] = f2b(va);
            v_out[(size_t)m * D + d + 8] = f2b(vb);
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) skinny_gemm_k(
    const bf16_t* __restrict__ X, int ldx, int M, const bf16_t* __restrict__ W, int N, int K,
    int klen, float* __restrict__ ws, int rms, int mode, float eps, bf16_t* Y, int ldy,
    bf16_t* q_out, bf16_t* k_out, bf16_t* v_out, int H, int D, int pos0, float base) {
    __shared__ __align__(16) bf16_t xs[2][8 * SK_MAXT][SK_XP];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int tile = blockIdx.x * SK_WARPS + warp;
    const int ntiles = N >> 4;
    const bool active = tile < ntiles;
    const int sp = blockIdx.y;
    const int ks = sp * klen;
    const int ke = min(K, ks + klen);
    const int MT = (M + 7) >> 3;
    const int n0 = (active ? tile : 0) * 16;
    const bf16_t* wr0 = W + (size_t)(n0 + g) * K;
    const bf16_t* wr1 = wr0 + (size_t)8 * K;
    float acc[SK_MAXT][4];
    float ss[SK_MAXT];
#pragma unroll
    for (int j = 0; j < SK_MAXT; j++) {
        acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
        ss[j] = 0.f;
    }
    const uint4 z = make_uint4(0, 0, 0, 0);
    const int nseg = MT * 8 * 8;  // 16-byte segments of one X chunk
    // Stage chunk 0 of X; load chunk 0 of W.
    for (int i = threadIdx.x; i < nseg; i += blockDim.x) {
        const int row = i >> 3, seg = i & 7, k = ks + seg * 8;
        uint4 v = z;
        if (row < M && k < ke) v = __ldg((const uint4*)(X + (size_t)row * ldx + k));
        *(uint4*)&xs[0][row][seg * 8] = v;
    }
    uint4 w00 = z, w01 = z, w10 = z, w11 = z;
    if (active && ks + t * 16 < ke) {
        const int kk = ks + t * 16;
        w00 = ld_stream(wr0 + kk);
        w01 = ld_stream(wr0 + kk + 8);
        w10 = ld_stream(wr1 + kk);
        w11 = ld_stream(wr1 + kk + 8);
    }
    __syncthreads();
    int buf = 0;
    for (int k0 = ks; k0 < ke; k0 += 64) {
        const int kn = k0 + 64;
        // Prefetch the next chunk: W into registers, X into registers (stored to smem below).
        uint4 n00 = z, n01 = z, n10 = z, n11 = z;
        if (active && kn + t * 16 < ke) {
            const int kk = kn + t * 16;
            n00 = ld_stream(wr0 + kk);
            n01 = ld_stream(wr0 + kk + 8);
            n10 = ld_stream(wr1 + kk);
            n11 = ld_stream(wr1 + kk + 8);
        }
        uint4 xn[5];
#pragma unroll
        for (int r = 0; r < 5; r++) {
            const int i = threadIdx.x + r * 128;
            xn[r] = z;
            if (kn < ke && i < nseg) {
                const int row = i >> 3, seg = i & 7, k = kn + seg * 8;
                if (row < M && k < ke) xn[r] = __ldg((const uint4*)(X + (size_t)row * ldx + k));
            }
        }
        if (active) {
            const u32 A0[8] = {w00.x, w00.y, w00.z, w00.w, w01.x, w01.y, w01.z, w01.w};
            const u32 A1[8] = {w10.x, w10.y, w10.z, w10.w, w11.x, w11.y, w11.z, w11.w};
#pragma unroll
            for (int j = 0; j < SK_MAXT; j++) {
                if (j < MT) {
                    const uint4 xa = *(const uint4*)&xs[buf][j * 8 + g][t * 16];
                    const uint4 xb = *(const uint4*)&xs[buf][j * 8 + g][t * 16 + 8];
                    const u32 B[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
                    for (int s = 0; s < 4; s++)
                        mma16816(acc[j], A0[2 * s], A1[2 * s], A0[2 * s + 1], A1[2 * s + 1], B[2 * s], B[2 * s + 1]);
                    if (rms) {
                        float q = 0.f;
#pragma unroll
                        for (int i = 0; i < 8; i++) q += sq2(B[i]);
                        ss[j] += q;
                    }
                }
            }
        }
        if (kn < ke) {
#pragma unroll
            for (int r = 0; r < 5; r++) {
                const int i = threadIdx.x + r * 128;
                if (i < nseg) *(uint4*)&xs[buf ^ 1][i >> 3][(i & 7) * 8] = xn[r];
            }
        }
        __syncthreads();
        buf ^= 1;
        w00 = n00;
        w01 = n01;
        w10 = n10;
        w11 = n11;
    }
    if (!active) return;
    if (rms) {
#pragma unroll
        for (int j = 0; j < SK_MAXT; j++) {
            ss[j] += __shfl_xor_sync(0xffffffffu, ss[j], 1);
            ss[j] += __shfl_xor_sync(0xffffffffu, ss[j], 2);
        }
    }
    if (gridDim.y == 1) {
#pragma unroll
        for (int j = 0; j < SK_MAXT; j++) {
            if (j >= MT) continue;
            const float sa = __shfl_sync(0xffffffffu, ss[j], 8 * t);
            const float sb = __shfl_sync(0xffffffffu, ss[j], 8 * t + 4);
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int m = j * 8 + 2 * t + e;
                if (m >= M) continue;
                const float r = rms ? rsqrtf((e ? sb : sa) / (float)K + eps) : 1.f;
                sk_epilogue(acc[j][e] * r, acc[j][2 + e] * r, m, tile, g, mode, Y, ldy, q_out, k_out, v_out, H, D, pos0, base);
            }
        }
        return;
    }
    float* part = ws + ((size_t)sp * ntiles + tile) * SK_PART;
#pragma unroll
    for (int j = 0; j < SK_MAXT; j++)
        if (j < MT) *(float4*)(part + (j * 32 + lane) * 4) = make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
    if (rms && t == 0) {
#pragma unroll
        for (int j = 0; j < SK_MAXT; j++)
            if (j < MT) part[16 * 8 * SK_MAXT + j * 8 + g] = ss[j];
    }
}

// Sums the split partials in split order and applies the epilogue. One thread per
// (tile, n8 tile j, lane, e): the two weight rows g and g + 8 for token j*8 + 2t + e.
extern "C" __global__ void skinny_reduce_k(const float* __restrict__ ws, int splits, int N, int M,
                                           int K, int mode, int rms, float eps, bf16_t* Y, int ldy,
                                           bf16_t* q_out, bf16_t* k_out, bf16_t* v_out, int H,
                                           int D, int pos0, float base) {
    const int ntiles = N >> 4;
    const int MT = (M + 7) >> 3;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    const int per_tile = MT * 64;
    if (idx >= ntiles * per_tile) return;
    const int tile = idx / per_tile;
    const int rem = idx % per_tile;
    const int j = rem / 64, lane = (rem % 64) >> 1, e = rem & 1;
    const int g = lane >> 2, t = lane & 3;
    const int m = j * 8 + 2 * t + e;
    if (m >= M) return;
    float va = 0.f, vb = 0.f, sq = 0.f;
    const size_t stride = (size_t)ntiles * SK_PART;
    const float* p = ws + (size_t)tile * SK_PART;
    const int o = (j * 32 + lane) * 4 + e;
#pragma unroll 4
    for (int s = 0; s < splits; s++) {
        va += __ldcg(p + s * stride + o);
        vb += __ldcg(p + s * stride + o + 2);
        if (rms) sq += __ldcg(p + s * stride + 16 * 8 * SK_MAXT + m);
    }
    const float r = rms ? rsqrtf(sq / (float)K + eps) : 1.f;
    sk_epilogue(va * r, vb * r, m, tile, g, mode, Y, ldy, q_out, k_out, v_out, H, D, pos0, base);
}
