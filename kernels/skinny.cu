// Weight-streaming GEMM for the action expert (the decoder's 51-65 token rows), and the
// kernels that consume its split-K partial sums.
//
// part[s][m][n] = sum_{k in split s} X[m][k] * W[n][k]; X [rows][ldx] bf16; W in the tiled
// layout of src/gpu/skinny.rs: 128-row x 64-k tiles of 16 KB, contiguous along k for each
// 128-row band, rows' 16-byte chunks pre-swizzled (chunk c of row r at c ^ (r & 7)).
// The decoder is bound by reading each weight once (6.2 GB per inference), so the kernel is
// built for memory-level parallelism: each CTA owns a 128-row band x one K range and streams
// its tiles into a 4-stage shared-memory ring, one bulk copy (TMA engine, mbarrier completion)
// per 16 KB tile on Hopper, cp.async elsewhere; the token rows' X slice comes alongside by
// cp.async. Tensor cores (mma.sync m16n8k16, weights on the M side) do the arithmetic from
// ldmatrix fragments. Split-K partials go to an fp32 workspace and the next kernel of the layer
// (RoPE, residual + RMSNorm, GELU-gate) sums them in split order while doing its own job:
// deterministic, and no reduction kernel. With programmatic dependent launch the first tiles
// are requested before waiting for the previous kernel (weights never depend on it).

#define WG_BN 128      // weight rows per CTA (4 warps x 32)
#define WG_BK 64       // k per stage (one 128-byte row per weight row)
// Ring depth: 4 stages (two CTAs per SM) by default; 3 stages (three CTAs per SM) for SM
// partitions too small to hold a GEMM's grid two per SM in one wave. The depth changes only
// when tiles arrive, not the order of the arithmetic: results are the same bit for bit.

DEV u32 smem_u32(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}

DEV void cp_async16(u32 dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
DEV void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
DEV void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

DEV void ldsm_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

DEV void mma_bf16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Same with fp16 operands (the norm-fed GEMMs of the expert, see src/gpu/skinny.rs `Operands`).
DEV void mma_f16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <bool F16>
DEV void mma_16x8x16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    if (F16)
        mma_f16(c, a0, a1, a2, a3, b0, b1);
    else
        mma_bf16(c, a0, a1, a2, a3, b0, b1);
}

// Row r of a 128-byte-per-row tile, 16-byte chunk c, XOR-swizzled so that ldmatrix's eight
// row addresses hit eight different bank groups.
DEV u32 swz(u32 base, int r, int c) { return base + r * 128 + ((c ^ (r & 7)) << 4); }

#define WG_TILE (WG_BN * WG_BK)  // bf16 elements per weight tile (16 KB)

#if __CUDA_ARCH__ >= 900
DEV void mbar_init(u32 bar) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bar));
}
DEV bool mbar_try_wait(u32 bar, u32 parity) {
    u32 ok;
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; "
        "selp.u32 %0, 1, 0, p; }\n"
        : "=r"(ok)
        : "r"(bar), "r"(parity)
        : "memory");
    return ok != 0;
}
#endif

// L2 policy for the weight stream: every weight is read once per flow step and the expert's
// 620 MB never fit the L2, so its tiles are marked evict-first (they would otherwise push out
// what is reused: split-K partials, the prefix K/V cache, and under SM partitions the
// encoder's operands). 0 = no hint.
DEV u64 wg_policy(int evict_first) {
    u64 pol = 0;
#if __CUDA_ARCH__ >= 900
    if (evict_first) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
#endif
    return pol;
}

// Requests weight tile `tile` into ring slot `sw` (barrier `bar` on Hopper): one bulk copy by
// thread 0 (with L2 policy `pol` when non-zero), or 8 cp.async per thread (in the caller's
// commit group) before Hopper.
DEV void wg_load_w(u32 sw, u32 bar, const bf16_t* __restrict__ tile, u64 pol) {
#if __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
                     "r"(WG_TILE * 2)
                     : "memory");
        if (pol)
            asm volatile(
                "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint "
                "[%0], [%1], %2, [%3], %4;\n" ::"r"(sw),
                "l"(tile), "r"(WG_TILE * 2), "r"(bar), "l"(pol)
                : "memory");
        else
            asm volatile(
                "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, "
                "[%3];\n" ::"r"(sw),
                "l"(tile), "r"(WG_TILE * 2), "r"(bar)
                : "memory");
    }
#else
#pragma unroll
    for (int i = 0; i < WG_TILE / 8 / 128; i++) {
        const int c = threadIdx.x + i * 128;
        cp_async16(sw + c * 16, tile + c * 8);
    }
#endif
}

DEV void wg_wait_w(u32 bar, int use) {
#if __CUDA_ARCH__ >= 900
    while (!mbar_try_wait(bar, (u32)(use & 1))) {
    }
#endif
}

DEV void wg_load_x(u32 sx, const bf16_t* __restrict__ X, int ldx, int rows, int xr, int k) {
    for (int c = threadIdx.x; c < xr * 8; c += 128) {
        const int r = c >> 3, ch = c & 7;
        const int m = min(r, rows - 1);  // padding token rows: loaded, never stored
        cp_async16(swz(sx, r, ch), X + (size_t)m * ldx + k + ch * 8);
    }
}

// NTP: token tiles of 8 (even), rows <= 8 * NTP; ST: ring stages; F16: X and W are fp16
// (else bf16).
template <int NTP, int ST, bool F16>
DEV void wgemm_body(const bf16_t* __restrict__ X, int ldx, const bf16_t* __restrict__ W, int K,
                    float* __restrict__ part, int N, int rows, int evict_first) {
    extern __shared__ __align__(128) unsigned char wg_smem[];
    const int XR = NTP * 8;
    const u32 stage_bytes = (WG_BN + XR) * 128;
    const u32 base = smem_u32(wg_smem), bars = base + ST * stage_bytes;
    // Split blockIdx.y of gridDim.y takes k tiles [b0, b1): any split count, the tile counts of
    // two splits differing by at most one (a count dividing K / 64 gives equal ranges).
    const int split = blockIdx.y, kt_all = K / WG_BK;
    const int b0 = split * kt_all / gridDim.y, b1 = (split + 1) * kt_all / gridDim.y;
    const int kbeg = b0 * WG_BK, nk = b1 - b0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // This CTA's tiles: band blockIdx.x, k tiles kbeg/64 .. + nk.
    const bf16_t* wt = W + ((size_t)blockIdx.x * (K / WG_BK) + kbeg / WG_BK) * WG_TILE;
    const u64 pol = wg_policy(evict_first);
#if __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
        for (int s = 0; s < ST; s++) mbar_init(bars + 8 * s);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
#endif

    // Weights of the first stages before the dependency wait: they do not depend on it.
#pragma unroll
    for (int s = 0; s < ST - 1; s++)
        if (s < nk) wg_load_w(base + s * stage_bytes, bars + 8 * s, wt + (size_t)s * WG_TILE, pol);
    pdl_wait();
    pdl_trigger();
#pragma unroll
    for (int s = 0; s < ST - 1; s++) {
        if (s < nk) wg_load_x(base + s * stage_bytes + WG_BN * 128, X, ldx, rows, XR, kbeg + s * WG_BK);
        cp_async_commit();
    }

    float acc[2][NTP][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int j = 0; j < NTP; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[a][j][e] = 0.f;

    for (int kt = 0; kt < nk; kt++) {
        cp_async_wait<ST - 2>();
        wg_wait_w(bars + 8 * (kt % ST), kt / ST);
        __syncthreads();
        const int nxt = kt + ST - 1;
        if (nxt < nk) {
            const int slot = nxt % ST;
            const u32 sn = base + slot * stage_bytes;
            wg_load_w(sn, bars + 8 * slot, wt + (size_t)nxt * WG_TILE, pol);
            wg_load_x(sn + WG_BN * 128, X, ldx, rows, XR, kbeg + nxt * WG_BK);
        }
        cp_async_commit();
        const u32 sw = base + (kt % ST) * stage_bytes, sx = sw + WG_BN * 128;
        const int mi = lane >> 3;
#pragma unroll
        for (int kk = 0; kk < WG_BK / 16; kk++) {
            const int kc = kk * 2;
            u32 a[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const int r = warp * 32 + mt * 16 + (lane & 7) + ((mi & 1) << 3);
                ldsm_x4(swz(sw, r, kc + (mi >> 1)), a[mt][0], a[mt][1], a[mt][2], a[mt][3]);
            }
#pragma unroll
            for (int p = 0; p < NTP / 2; p++) {
                const int r = p * 16 + ((mi >> 1) << 3) + (lane & 7);
                u32 b0, b1, b2, b3;
                ldsm_x4(swz(sx, r, kc + (mi & 1)), b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    mma_16x8x16<F16>(acc[mt][2 * p], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b0, b1);
                    mma_16x8x16<F16>(acc[mt][2 * p + 1], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b2, b3);
                }
            }
        }
    }
    cp_async_wait<0>();

    const int n0 = blockIdx.x * WG_BN;
    const int g = lane >> 2, q = lane & 3;
    float* ps = part + (size_t)split * rows * N;
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
        const int f = n0 + warp * 32 + mt * 16 + g;
#pragma unroll
        for (int j = 0; j < NTP; j++) {
            const int t = j * 8 + 2 * q;
            if (t < rows) {
                if (f < N) ps[(size_t)t * N + f] = acc[mt][j][0];
                if (f + 8 < N) ps[(size_t)t * N + f + 8] = acc[mt][j][2];
            }
            if (t + 1 < rows) {
                if (f < N) ps[(size_t)(t + 1) * N + f] = acc[mt][j][1];
                if (f + 8 < N) ps[(size_t)(t + 1) * N + f + 8] = acc[mt][j][3];
            }
        }
    }
}

#define WGEMM(NTP, ST, F16, NAME)                                                              \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                    \
        const bf16_t* __restrict__ X, int ldx, const bf16_t* __restrict__ W, int K,            \
        float* __restrict__ part, int N, int rows, int evict_first) {                          \
        wgemm_body<NTP, ST, F16>(X, ldx, W, K, part, N, rows, evict_first);                    \
    }
WGEMM(2, 4, false, wgemm_t2_k)
WGEMM(4, 4, false, wgemm_t4_k)
WGEMM(6, 4, false, wgemm_t6_k)
WGEMM(8, 4, false, wgemm_t8_k)
WGEMM(10, 4, false, wgemm_t10_k)
WGEMM(2, 3, false, wgemm_t2_s3_k)
WGEMM(4, 3, false, wgemm_t4_s3_k)
WGEMM(6, 3, false, wgemm_t6_s3_k)
WGEMM(8, 3, false, wgemm_t8_s3_k)
WGEMM(10, 3, false, wgemm_t10_s3_k)
WGEMM(2, 4, true, wgemm_h_t2_k)
WGEMM(4, 4, true, wgemm_h_t4_k)
WGEMM(6, 4, true, wgemm_h_t6_k)
WGEMM(8, 4, true, wgemm_h_t8_k)
WGEMM(10, 4, true, wgemm_h_t10_k)
WGEMM(2, 3, true, wgemm_h_t2_s3_k)
WGEMM(4, 3, true, wgemm_h_t4_s3_k)
WGEMM(6, 3, true, wgemm_h_t6_s3_k)
WGEMM(8, 3, true, wgemm_h_t8_s3_k)
WGEMM(10, 3, true, wgemm_h_t10_s3_k)

// Entry of the kernels that a weight GEMM follows (residual + RMSNorm, GELU-gate): the trigger
// comes first, so the GEMM launches and requests its first weight tiles as soon as this kernel's
// CTAs are all resident, while the kernel before this one still runs (one kernel earlier than
// after the wait: decoder 8.37 -> 8.25 ms on the H100, docs/gpu-notes.md v24). Still exact: the
// GEMM touches nothing but weights before its own griddepcontrol.wait, which waits for this grid
// to complete, and this grid waits for the one before. PI0_PDL_WAIT_FIRST restores the old order.
DEV void pdl_enter_before_gemm() {
#ifdef PI0_PDL_WAIT_FIRST
    pdl_wait();
    pdl_trigger();
#else
    pdl_trigger();
    pdl_wait();
#endif
}

// Sum of the split-K partials of element i of row m (row length n, `splits` splits).
DEV float part_sum(const float* __restrict__ part, int splits, int rows, int n, int m, int i) {
    float v = 0.f;
#pragma unroll 8
    for (int s = 0; s < splits; s++) v += part[((size_t)s * rows + m) * n + i];
    return v;
}

DEV float4 part_sum4(const float* __restrict__ part, int splits, int rows, int n, int m, int i) {
    float4 v;
    v.x = v.y = v.z = v.w = 0.f;
#pragma unroll 8
    for (int s = 0; s < splits; s++) {
        const float4 p = *(const float4*)(part + ((size_t)s * rows + m) * n + i);
        v.x += p.x;
        v.y += p.y;
        v.z += p.z;
        v.w += p.w;
    }
    return v;
}

// QKV partials -> split-half RoPE (openpi `_apply_rope`) on q and k in fp32, then one rounding
// -> q [T][H][D] and the K/V cache rows. Block (t, h): q heads, k heads, then one block copying
// v. Also the LLM's RoPE, with splits = 1 on its cuBLASLt QKV GEMM's fp32 output. cos/sin come
// from a table [position][D/2] of float2 computed once on the host in f64.
extern "C" __global__ void rope_part_k(const float* __restrict__ part, int splits, int rows,
                                       bf16_t* __restrict__ q_out, bf16_t* __restrict__ k_out,
                                       bf16_t* __restrict__ v_out, int H, int Hkv, int D, int pos0,
                                       const float2* __restrict__ table) {
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x, h = blockIdx.y;
    const int half = D / 2, n = (H + 2 * Hkv) * D;
    if (h == H + Hkv) {
        for (int i = threadIdx.x; i < Hkv * D; i += blockDim.x)
            v_out[(size_t)t * Hkv * D + i] = f2b(part_sum(part, splits, rows, n, t, (H + Hkv) * D + i));
        return;
    }
    const float2* cs = table + (size_t)(pos0 + t) * half;
    bf16_t* dst = (h < H) ? (q_out + ((size_t)t * H + h) * D) : (k_out + ((size_t)t * Hkv + (h - H)) * D);
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float2 c = cs[i];
        const float x1 = part_sum(part, splits, rows, n, t, h * D + i);
        const float x2 = part_sum(part, splits, rows, n, t, h * D + i + half);
        dst[i] = f2b(x1 * c.x - x2 * c.y);
        dst[i + half] = f2b(x2 * c.x + x1 * c.y);
    }
}

// rope_part_k for many rows (the LLM prefix: 532 rows, its cuBLASLt QKV GEMM's fp32 output as
// one split), vectorised: grid (T, ceil(units / blockDim)), per row (H + Hkv) * D/8 rotation
// units (4 pairs each, float4 loads) and then Hkv * D/4 units of 4 v values. Same arithmetic
// per element. 8.7 -> ~5 us per LLM layer; on the expert's 51 rows it was slower (fewer blocks).
extern "C" __global__ void rope_rows_k(const float* __restrict__ part, int splits, int rows,
                                       bf16_t* __restrict__ q_out, bf16_t* __restrict__ k_out,
                                       bf16_t* __restrict__ v_out, int H, int Hkv, int D, int pos0,
                                       const float2* __restrict__ table) {
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x, u = blockIdx.y * blockDim.x + threadIdx.x;
    const int half = D / 2, per_head = half / 4, n = (H + 2 * Hkv) * D;
    const int rot_units = (H + Hkv) * per_head;
    if (u >= rot_units) {
        const int i = (u - rot_units) * 4;
        if (i >= Hkv * D) return;
        const float4 v = part_sum4(part, splits, rows, n, t, (H + Hkv) * D + i);
        store4(v_out + (size_t)t * Hkv * D + i, v.x, v.y, v.z, v.w);
        return;
    }
    const int h = u / per_head, j = (u % per_head) * 4;
    const float4* cs = (const float4*)(table + (size_t)(pos0 + t) * half + j);
    const float4 c01 = cs[0], c23 = cs[1];  // (cos, sin) of pairs j, j+1 and j+2, j+3
    bf16_t* dst = (h < H) ? (q_out + ((size_t)t * H + h) * D) : (k_out + ((size_t)t * Hkv + (h - H)) * D);
    const float4 a = part_sum4(part, splits, rows, n, t, h * D + j);
    const float4 b = part_sum4(part, splits, rows, n, t, h * D + j + half);
    store4(dst + j, a.x * c01.x - b.x * c01.y, a.y * c01.z - b.y * c01.w, a.z * c23.x - b.z * c23.y,
           a.w * c23.z - b.w * c23.w);
    store4(dst + j + half, b.x * c01.x + a.x * c01.y, b.y * c01.z + a.y * c01.w,
           b.z * c23.x + a.z * c23.y, b.w * c23.z + a.w * c23.w);
}

// Residual + RMSNorm of one token row per block (width / 4 threads): x += sum of the
// partials (splits may be 0); then, when y is given, y = x * rsqrt(mean(x^2) + eps) * scale,
// stored as bf16, or as fp16 when y_f16 (for fp16 GEMMs: 8x less rounding; |y| <=
// sqrt(width) * max|scale|, which the host checked is within fp16's range).
extern "C" __global__ void resid_rms_k(float* __restrict__ x, const float* __restrict__ part,
                                       int splits, int rows, int width, bf16_t* __restrict__ y,
                                       const float* __restrict__ scale, float eps, int y_f16) {
    __shared__ float red[32];
    pdl_enter_before_gemm();
    const int m = blockIdx.x, i = threadIdx.x * 4;
    float4 v;
    v.x = v.y = v.z = v.w = 0.f;
    if (i < width) {
        float* xr = x + (size_t)m * width + i;
        v = *(float4*)xr;
        if (splits > 0) {
            const float4 p = part_sum4(part, splits, rows, width, m, i);
            v.x += p.x;
            v.y += p.y;
            v.z += p.z;
            v.w += p.w;
            *(float4*)xr = v;
        }
    }
    if (y == nullptr) return;
    const float s = block_sum((v.x * v.x + v.y * v.y) + (v.z * v.z + v.w * v.w), red);
    const float r = rsqrtf(s / (float)width + eps);
    if (i < width) {
        const float4 g = *(const float4*)(scale + i);
        const float a = v.x * r * g.x, b = v.y * r * g.y, c = v.z * r * g.z, d = v.w * r * g.w;
        if (y_f16) {
            uint2 u;
            u.x = (u32)f2h(a) | ((u32)f2h(b) << 16);
            u.y = (u32)f2h(c) | ((u32)f2h(d) << 16);
            *(uint2*)(y + (size_t)m * width + i) = u;
        } else {
            store4(y + (size_t)m * width + i, a, b, c, d);
        }
    }
}

// gate|up partials -> h = gelu_tanh(gate) * up, bf16 [rows][F]; 4 outputs per thread.
extern "C" __global__ void gelu_part_k(const float* __restrict__ part, int splits, int rows,
                                       int F, bf16_t* __restrict__ h) {
    pdl_enter_before_gemm();
    const size_t i4 = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) * 4;
    if (i4 >= (size_t)rows * F) return;
    const int m = (int)(i4 / F), c = (int)(i4 % F);
    const float4 g = part_sum4(part, splits, rows, 2 * F, m, c);
    const float4 u = part_sum4(part, splits, rows, 2 * F, m, F + c);
    store4(h + i4, gelu_tanh(g.x) * u.x, gelu_tanh(g.y) * u.y, gelu_tanh(g.z) * u.z,
           gelu_tanh(g.w) * u.w);
}
