// Fused attention (QKᵀ → masked fp32 softmax → P·V in one kernel, flash-attention style) for
// the vision tower, the LLM prefix and the action expert. One K/V head shared by every query
// row (π0's Gemma blocks are multi-query: the heads of a token are just more query rows).
//
// CTA = 8 warps over 64 query rows: warp w owns rows 16·(w % 4) .. +16 and one half (32 keys)
// of every 64-key block, with its own online softmax (running max m and sum l per row, fp32,
// exp2 with the scale folded in); the two halves merge in shared memory at the end. P is
// rounded to bf16 for the P·V tensor-core product, as the unfused path rounds the normalised
// probabilities. With `splits` > 1 (Hopper) the key blocks of one row tile are spread over a
// thread-block cluster of `splits` CTAs, merged through distributed shared memory: one kernel,
// no partials in DRAM.
//
// Batched layouts (vision: batch = view x head) come as (outer, inner) strides: batch b starts
// at (b / inner) * outer + (b % inner) * inner_stride. Head dims d <= HD (multiple of 8) are
// zero-padded to HD (multiple of 16) in shared memory.

#define FA_BM 64       // query rows per CTA
#define FA_BN 64       // keys per block
#define FA_THREADS 256 // 4 row groups x 2 key halves
#define FA_NEG_INF __int_as_float(0xff800000)

DEV void cp_async16_z(u32 dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(valid ? 16 : 0));
}

DEV void ldsm_x4_t(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// Two floats -> bf16x2 (round to nearest even), `lo` in the low half.
DEV u32 pack_bf16(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Rows [r0, r0 + 64) x d columns of a row-major bf16 matrix into shared memory (row stride
// LD elements), zero-filled past `limit` rows and `d` columns.
template <int HD, int LD>
DEV void fa_load(u32 dst, const bf16_t* __restrict__ src, long long ld, int r0, int limit, int d) {
    constexpr int CPR = HD / 8;  // 16-byte chunks per row
    if (FA_THREADS % CPR == 0 && FA_THREADS / CPR <= FA_BM) {
        // Each thread keeps one column chunk and walks rows: no divisions in the loop.
        constexpr int RPI = FA_THREADS / CPR;
        const int c = threadIdx.x % CPR, r = threadIdx.x / CPR;
        const bool col_ok = c * 8 < d;
        const bf16_t* p = src + (size_t)(r0 + r) * ld + c * 8;
        u32 sd = dst + (r * LD + c * 8) * 2;
#pragma unroll
        for (int i = 0; i < FA_BM / RPI; i++) {
            const bool ok = col_ok && (r0 + r + i * RPI < limit);
            cp_async16_z(sd, ok ? p : src, ok);
            p += (size_t)RPI * ld;
            sd += RPI * LD * 2;
        }
    } else {
        for (int i = threadIdx.x; i < FA_BM * CPR; i += FA_THREADS) {
            const int r = i / CPR, c = i % CPR;
            const bool ok = (r0 + r < limit) && (c * 8 < d);
            const bf16_t* p = ok ? src + (size_t)(r0 + r) * ld + c * 8 : src;
            cp_async16_z(dst + (r * LD + c * 8) * 2, p, ok);
        }
    }
}

#if __CUDA_ARCH__ >= 900
DEV void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::
                     : "memory");
}
// Loads from CTA `rank`'s shared memory at this CTA's address `local`. Volatile keeps them
// between the cluster barriers; no memory clobber, so independent loads still overlap.
DEV u32 map_cluster(u32 local, u32 rank) {
    u32 remote;
    asm("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(rank));
    return remote;
}
DEV float ld_cluster(u32 local, u32 rank) {
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(map_cluster(local, rank)));
    return v;
}
DEV float4 ld_cluster4(u32 local, u32 rank) {
    float4 v;
    asm volatile("ld.shared::cluster.v4.f32 {%0,%1,%2,%3}, [%4];\n"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(map_cluster(local, rank)));
    return v;
}
#endif

// Stores the unnormalised O (rows padded to LD floats: the float2 stores of a quad's 8 rows
// spread over the banks), m and l of this warp's 16 rows starting at row r16 of the tile.
template <int NT, int LD>
DEV void fa_publish(float* xo, float* xm, float* xl, const float (&acc)[NT][4], const float* m,
                    const float* l, int r16, int g, int t) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int rl = r16 + g + 8 * h;
#pragma unroll
        for (int j = 0; j < NT; j++)
            *(float2*)(xo + rl * LD + j * 8 + 2 * t) = make_float2(acc[j][2 * h], acc[j][2 * h + 1]);
        if (t == 0) {
            xm[rl] = m[h];
            xl[rl] = l[h];
        }
    }
}

template <int HD>
DEV void flash_body(const bf16_t* __restrict__ q, long long ldq, long long q_outer,
                    long long q_inner, const bf16_t* __restrict__ k,
                    const bf16_t* __restrict__ v, long long ldkv, long long kv_outer,
                    long long kv_inner, bf16_t* __restrict__ o, long long ldo, long long o_outer,
                    long long o_inner, int inner, int rows, int keys, int d, int mask_rows,
                    int mask_keys, float scale_log2, int splits) {
    constexpr int LD = HD + 8;  // odd number of 16-byte chunks per row: conflict-free ldmatrix
    constexpr int NT = HD / 8;  // output column tiles
    constexpr u32 TILE = FA_BN * LD * 2;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    // Q, then two K/V buffers: the next block's K/V loads while this one is used.
    const u32 sq = smem_u32(fa_smem), skv = sq + FA_BM * LD * 2;
    const int split = blockIdx.x % splits, r0 = (blockIdx.x / splits) * FA_BM;
    const int b = blockIdx.z, bo = b / inner, bi = b % inner;
    q += bo * q_outer + bi * q_inner;
    k += bo * kv_outer + bi * kv_inner;
    v += bo * kv_outer + bi * kv_inner;
    o += bo * o_outer + bi * o_inner;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int rg = warp & 3, kh = warp >> 2;  // row group, key half

    pdl_wait();
    pdl_trigger();
    const int blocks = (keys + FA_BN - 1) / FA_BN;
    fa_load<HD, LD>(sq, q, ldq, r0, rows, d);
    if (split < blocks) {
        fa_load<HD, LD>(skv, k, ldkv, split * FA_BN, keys, d);
        fa_load<HD, LD>(skv + TILE, v, ldkv, split * FA_BN, keys, d);
    }
    cp_async_commit();

    // Rows of this thread (g and g + 8 of the warp's 16) and how many keys each may see.
    const int ra = r0 + rg * 16 + g, rb = ra + 8;
    const int na = ra < mask_rows ? mask_keys : keys, nb = rb < mask_rows ? mask_keys : keys;
    // m is kept in scaled (log2) units.
    float m[2] = {-1e30f, -1e30f}, l[2] = {0.f, 0.f};
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

    int buf = 0;
    for (int kb = split; kb < blocks; kb += splits, buf ^= 1) {
        const int k0 = kb * FA_BN, kw = k0 + kh * 32;  // this warp's first key
        const u32 sk = skv + buf * 2 * TILE, sv = sk + TILE;
        cp_async_wait<0>();
        __syncthreads();  // this block landed; every warp is done with the other buffer
        if (kb + splits < blocks) {
            const u32 nk = skv + (buf ^ 1) * 2 * TILE;
            fa_load<HD, LD>(nk, k, ldkv, k0 + splits * FA_BN, keys, d);
            fa_load<HD, LD>(nk + TILE, v, ldkv, k0 + splits * FA_BN, keys, d);
        }
        cp_async_commit();

        // S = Q Kᵀ for the warp's 16 rows x 32 keys.
        float s[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
        const u32 qa = sq + ((rg * 16 + (lane & 15)) * LD + (lane >> 4) * 8) * 2;
        const u32 kbase = sk + ((kh * 32 + (lane & 7) + ((lane >> 4) << 3)) * LD + ((lane >> 3) & 1) * 8) * 2;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            u32 a0, a1, a2, a3;
            ldsm_x4(qa + kk * 32, a0, a1, a2, a3);
#pragma unroll
            for (int np = 0; np < 2; np++) {
                u32 b0, b1, b2, b3;
                ldsm_x4(kbase + (np * 16 * LD + kk * 16) * 2, b0, b1, b2, b3);
                mma_bf16(s[2 * np], a0, a1, a2, a3, b0, b1);
                mma_bf16(s[2 * np + 1], a0, a1, a2, a3, b2, b3);
            }
        }

        // Mask (only where some key of this warp's slice is out of reach of some row).
        if (!__all_sync(0xffffffffu, kw + 32 <= min(na, nb))) {
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kw + j * 8 + 2 * t + (e & 1);
                    if (key >= (e < 2 ? na : nb)) s[j][e] = FA_NEG_INF;
                }
        }
        // Online softmax update (a row's 32 scores live in the 4 threads of a quad).
        float mx[2] = {-1e30f, -1e30f};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
        }
        float alpha[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
            const float mn = fmaxf(m[h], mx[h] * scale_log2);
            alpha[h] = exp2f(m[h] - mn);
            m[h] = mn;
            l[h] *= alpha[h];
        }
        if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
            for (int j = 0; j < NT; j++) {
                acc[j][0] *= alpha[0];
                acc[j][1] *= alpha[0];
                acc[j][2] *= alpha[1];
                acc[j][3] *= alpha[1];
            }
        }
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[j][e] = exp2f(fmaf(s[j][e], scale_log2, -m[e >> 1]));
                l[e >> 1] += s[j][e];
            }

        // O += P V: P's accumulator layout is the A-fragment layout of the next product.
        const u32 vbase = sv + ((kh * 32 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8) * 2;
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            const u32 a0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            const u32 a1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            const u32 a2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            const u32 a3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < HD / 16; dp++) {
                u32 b0, b1, b2, b3;
                ldsm_x4_t(vbase + (kk * 16 * LD + dp * 16) * 2, b0, b1, b2, b3);
                mma_bf16(acc[2 * dp], a0, a1, a2, a3, b0, b1);
                mma_bf16(acc[2 * dp + 1], a0, a1, a2, a3, b2, b3);
            }
        }
    }
    cp_async_wait<0>();
#pragma unroll
    for (int h = 0; h < 2; h++) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }

    // Merge the key halves: the second half's warps hand O, m, l to the first half's.
    float* xo = (float*)fa_smem;  // [FA_BM][LD]
    float* xm = xo + FA_BM * LD;  // [FA_BM]
    float* xl = xm + FA_BM;       // [FA_BM]
    __syncthreads();  // Q/K/V tiles no longer read
    if (kh == 1) fa_publish<NT, LD>(xo, xm, xl, acc, m, l, rg * 16, g, t);
    __syncthreads();
    if (kh == 0) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int rl = rg * 16 + g + 8 * h;
            const float m2 = xm[rl], mn = fmaxf(m[h], m2);
            const float a1 = exp2f(m[h] - mn), a2 = exp2f(m2 - mn);
            l[h] = l[h] * a1 + xl[rl] * a2;
            m[h] = mn;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const float2 x = *(const float2*)(xo + rl * LD + j * 8 + 2 * t);
                acc[j][2 * h] = acc[j][2 * h] * a1 + x.x * a2;
                acc[j][2 * h + 1] = acc[j][2 * h + 1] * a1 + x.y * a2;
            }
        }
    }

    if (splits == 1) {
        if (kh == 1) return;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = h ? rb : ra;
            if (r >= rows) continue;
            const float inv = 1.f / l[h];
            bf16_t* orow = o + (size_t)r * ldo;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const int c = j * 8 + 2 * t;
                if (c < d) *(u32*)(orow + c) = pack_bf16(acc[j][2 * h] * inv, acc[j][2 * h + 1] * inv);
            }
        }
        return;
    }
#if __CUDA_ARCH__ >= 900
    // Cluster merge: every CTA publishes its rows' unnormalised O, m and l, then finalises
    // rows split, split + splits, ... of the tile from all CTAs' copies.
    float* sw = xl + FA_BM;  // [FA_BM][8]: this CTA's rows' weight of each CTA's copy
    __syncthreads();  // the second half's copies are consumed
    if (kh == 0) fa_publish<NT, LD>(xo, xm, xl, acc, m, l, rg * 16, g, t);
    cluster_sync();
    const int mine = (FA_BM - split + splits - 1) / splits;  // rows this CTA finalises
    if (threadIdx.x < mine) {
        const int rl = split + threadIdx.x * splits;
        float mc[8], mmax = -1e30f, lsum = 0.f;
#pragma unroll
        for (int c = 0; c < 8; c++) {
            mc[c] = c < splits ? ld_cluster(smem_u32(xm + rl), c) : -1e30f;
            mmax = fmaxf(mmax, mc[c]);
        }
#pragma unroll
        for (int c = 0; c < 8; c++) {
            mc[c] = exp2f(mc[c] - mmax);
            if (c < splits) lsum += mc[c] * ld_cluster(smem_u32(xl + rl), c);
        }
#pragma unroll
        for (int c = 0; c < 8; c++)
            if (c < splits) sw[threadIdx.x * 8 + c] = mc[c] / lsum;
    }
    __syncthreads();
    const u32 so_u = smem_u32(xo);
    for (int i = threadIdx.x; i < mine * (HD / 4); i += FA_THREADS) {
        const int ri = i / (HD / 4), col = (i % (HD / 4)) * 4;
        const int rl = split + ri * splits, r = r0 + rl;
        if (r >= rows || col >= d) continue;
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int c = 0; c < 8; c++) {
            if (c >= splits) break;
            const float4 x = ld_cluster4(so_u + (rl * LD + col) * 4, c);
            const float wc = sw[ri * 8 + c];
            sum.x += wc * x.x;
            sum.y += wc * x.y;
            sum.z += wc * x.z;
            sum.w += wc * x.w;
        }
        *(uint2*)(o + (size_t)r * ldo + col) =
            make_uint2(pack_bf16(sum.x, sum.y), pack_bf16(sum.z, sum.w));
    }
    cluster_sync();  // keep this CTA's shared memory alive until every peer has read it
#endif
}

#define FLASH(HD)                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS, 1) flash_hd##HD##_k(                        \
        const bf16_t* __restrict__ q, long long ldq, long long q_outer, long long q_inner,     \
        const bf16_t* __restrict__ k, const bf16_t* __restrict__ v, long long ldkv,            \
        long long kv_outer, long long kv_inner, bf16_t* __restrict__ o, long long ldo,         \
        long long o_outer, long long o_inner, int inner, int rows, int keys, int d,           \
        int mask_rows, int mask_keys, float scale_log2, int splits) {                          \
        flash_body<HD>(q, ldq, q_outer, q_inner, k, v, ldkv, kv_outer, kv_inner, o, ldo,       \
                       o_outer, o_inner, inner, rows, keys, d, mask_rows, mask_keys,           \
                       scale_log2, splits);                                                    \
    }
FLASH(16)
FLASH(32)
FLASH(64)
FLASH(80)
FLASH(128)
FLASH(256)
