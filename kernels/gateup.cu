// The LLM's gate|up projection with GELU·up in its epilogue (Hopper only; GpuOptions /
// PI0_LLM_MLP=fused): h[m][n] = gelu_tanh(X[m]·Wg[n]) * (X[m]·Wu[n]), where W = [Wg; Wu] is
// the layer's [2F][K] gate|up weight and X the [M][K] post-attention RMSNorm output, both bf16.
// Unfused, cuBLASLt writes the [M][2F] gate|up product (35 MB per layer for 2 views) and
// gelu_mul_k reads it back to write h (17 MB): 52 MB of L2/HBM traffic per layer that the
// decoder on the other partition competes with (docs/partition-notes.md). Here each CTA holds
// a gate tile and the up tile of the same BNO output columns in one accumulator (columns
// 0..BNO-1 gate, BNO..2*BNO-1 up), so h is the only output.
//
// Shape of one CTA: NC consumer warpgroups (64 token rows each) + one producer warpgroup whose
// thread 0 streams the k-stages by TMA (128-byte swizzle, zero fill past row M) into an
// ST-deep ring with full/empty mbarriers; consumers run wgmma m64n(2*BNO)k16 from shared
// memory descriptors. Grid: x = token tiles (fastest, so the CTAs that share a weight tile
// run together and read it from HBM once), y = F / BNO column tiles.

#define GU_BK 64  // k per stage: one 128-byte swizzled row per operand row

// A CUtensorMap (opaque, 128 bytes, 64-byte aligned), passed by value as a __grid_constant__.
struct __align__(64) TmaDesc {
    u64 v[16];
};

// wgmma exists on sm_90a only (not on Blackwell, whose __CUDA_ARCH__ is also >= 900).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// wgmma shared-memory descriptor of a K-major tile with 128-byte swizzle: 8-row core groups
// 1024 bytes apart (SBO), LBO unused (1), base 1024-aligned.
DEV u64 gu_desc(u32 saddr) {
    return (u64)((saddr & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) |
           ((u64)1 << 62);
}

// wgmma m64nNk16, bf16 in, fp32 accumulate into d (N / 2 registers per thread), A and B
// K-major in shared memory.
DEV void gu_wgmma_n256(float* d, u64 da, u64 db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
        "%128, %129, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(1));
}

DEV void gu_wgmma_n128(float* d, u64 da, u64 db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(1));
}

template <int N>
DEV void gu_wgmma(float* d, u64 da, u64 db) {
    if (N == 256)
        gu_wgmma_n256(d, da, db);
    else
        gu_wgmma_n128(d, da, db);
}

DEV void gu_tma_2d(u32 dst, const TmaDesc* map, u32 bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
        "[%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
        "l"((u64)map), "r"(bar), "r"(c0), "r"(c1)
        : "memory");
}

// The same with multicast: the box lands at the same offset in every CTA of `mask` and
// completes bytes on each one's barrier at `bar`.
DEV void gu_tma_2d_multicast(u32 dst, const TmaDesc* map, u32 bar, int c0, int c1, unsigned short mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        ".multicast::cluster [%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(dst),
        "l"((u64)map), "r"(bar), "r"(c0), "r"(c1), "h"(mask)
        : "memory");
}

DEV u32 gu_cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}

// Every thread of every CTA in the cluster (not necessarily converged: flash.cu's
// cluster_sync is the .aligned form).
DEV void gu_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}

// The address of this CTA's shared variable `local` in the CTA of cluster rank `rank`.
DEV u32 gu_mapa(u32 local, u32 rank) {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(rank));
    return remote;
}

DEV void gu_wait(u32 bar, u32 parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}
#endif

// Dynamic shared memory: ST * (NC * 8 KB + BNO * 256 B) + 1 KB (alignment to 1024 bytes for
// the swizzle) + 1 KB (barriers): 194 KB for (2, 128, 4), 162 KB for (3, 64, 4).
template <int NC, int BNO, int ST, int CY>
DEV void gateup_gelu_body(const TmaDesc* tx, const TmaDesc* tw, bf16_t* __restrict__ h, int M,
                          int F, int K) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ unsigned char gu_smem[];
    constexpr u32 A_BYTES = NC * 64 * GU_BK * 2;
    constexpr u32 B_BYTES = 2 * BNO * GU_BK * 2;  // the gate tile, then the up tile
    constexpr u32 STAGE = A_BYTES + B_BYTES;
    constexpr int NACC = BNO;  // accumulators per thread: m64n(2*BNO) / 128 threads
    const u32 base = (smem_u32(gu_smem) + 1023u) & ~1023u;
    const u32 bars = base + ST * STAGE;  // full[ST], then empty[ST], 8 bytes each
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
    const int m0 = blockIdx.x * NC * 64, n0 = blockIdx.y * BNO;
    const int kt = K / GU_BK;
    // With clusters (CY > 1: CY CTAs of consecutive column tiles, the same token rows) each
    // CTA loads 1/CY of the X tile and multicasts it to all, so X leaves the L2 once per
    // cluster; a stage is then free only when every CTA of the cluster has read it.
    const u32 rank = CY > 1 ? gu_cluster_rank() : 0;
    if (threadIdx.x == 0) {
        for (int s = 0; s < ST; s++) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bars + 8 * s));
            // Without clusters every consumer thread releases a stage once its own wgmma
            // reads are done; with them one lane per consumer warp of each CTA does.
            asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bars + 8 * (ST + s)),
                         "r"(CY > 1 ? CY * NC * 4 : NC * 128));
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    if (CY > 1)
        gu_cluster_sync();  // peers' barriers are initialised before anyone signals them
    else
        __syncthreads();
    pdl_trigger();
    if (wg == 0) {
        if (t == 0) {
            // Stage `it`'s weight tiles, with the stage's whole byte count announced.
            auto load_w = [&](int it) {
                const u32 full = bars + 8 * (it % ST), b = base + (it % ST) * STAGE + A_BYTES;
                asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(full),
                             "r"(STAGE)
                             : "memory");
                gu_tma_2d(b, tw, full, it * GU_BK, n0);
                gu_tma_2d(b + B_BYTES / 2, tw, full, it * GU_BK, F + n0);
            };
            // The weights do not depend on the kernel before (programmatic dependent launch):
            // the first ring's weight tiles are requested before waiting for it, X after.
            const int pre = kt < ST ? kt : ST;
            for (int it = 0; it < pre; it++) load_w(it);
            pdl_wait();  // X is the previous kernel's output
            for (int it = 0; it < kt; it++) {
                const int s = it % ST;
                if (it >= ST) {
                    gu_wait(bars + 8 * (ST + s), (u32)((it / ST - 1) & 1));
                    load_w(it);
                }
                const u32 full = bars + 8 * s, a = base + s * STAGE;
                if (CY > 1) {
                    constexpr int SLICE = NC * 64 / CY;  // X rows this CTA loads for all
                    gu_tma_2d_multicast(a + rank * SLICE * 128, tx, full, it * GU_BK,
                                        m0 + (int)rank * SLICE, (unsigned short)((1u << CY) - 1));
                } else {
                    gu_tma_2d(a, tx, full, it * GU_BK, m0);
                }
            }
        }
        if (CY > 1) gu_cluster_sync();  // stay until no peer can signal this CTA's barriers
        return;
    }
    const int c = wg - 1;  // consumer warpgroup: token rows m0 + 64c ...
    float d[NACC];
#pragma unroll
    for (int i = 0; i < NACC; i++) d[i] = 0.f;
    // One wgmma group stays in flight: stage it's MMAs are issued before stage it-1's are
    // waited for, and stage it-1 is released to the producer then.
    for (int it = 0; it < kt; it++) {
        const int s = it % ST;
        gu_wait(bars + 8 * s, (u32)((it / ST) & 1));
        const u32 a = base + s * STAGE + c * 64 * 128, b = base + s * STAGE + A_BYTES;
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < GU_BK / 16; kk++) gu_wgmma<2 * BNO>(d, gu_desc(a + kk * 32), gu_desc(b + kk * 32));
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
        if (it > 0) {
            const u32 empty = bars + 8 * (ST + (it - 1) % ST);
            if (CY == 1)
                asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(empty) : "memory");
            else if ((t & 31) < CY)  // lane j of each warp releases the stage in CTA j
                asm volatile(
                    "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(
                        gu_mapa(empty, t & 31))
                    : "memory");
        }
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    // The accumulators are final only after the wait: tie every register to it, or the
    // compiler may read them before (their last writer is the wgmma asm above).
#pragma unroll
    for (int i = 0; i < NACC; i++) asm volatile("" : "+f"(d[i])::"memory");
    pdl_wait();  // before the first global write (h may still be read by a kernel before)
    // Accumulator fragment of m64nN: register 4j + 2i + e holds row 16*warp + lane/4 + 8i,
    // column 8j + 2*(lane%4) + e; gate column j pairs with up column j + BNO / 8 (BNO further).
    const int warp = t / 32, lane = t % 32;
    const int r0 = m0 + c * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = r0 + 8 * i;
        if (r >= M) continue;
        bf16_t* out = h + (size_t)r * F + n0 + 2 * (lane % 4);
#pragma unroll
        for (int j = 0; j < BNO / 8; j++) {
            const float g0 = d[4 * j + 2 * i], g1 = d[4 * j + 2 * i + 1];
            const float u0 = d[4 * (j + BNO / 8) + 2 * i], u1 = d[4 * (j + BNO / 8) + 2 * i + 1];
            const u32 lo = f2b(gelu_tanh(g0) * u0), hi = f2b(gelu_tanh(g1) * u1);
            *(u32*)(out + 8 * j) = lo | (hi << 16);
        }
    }
    if (CY > 1) gu_cluster_sync();
#else
    __trap();  // launched only on sm_90 (src/gpu/gateup.rs)
#endif
}

#define GU_KERNEL(NAME, NC, BNO, ST, CY)                                                        \
    extern "C" __global__ void __launch_bounds__(128 * (NC + 1), 1)                             \
        NAME(const __grid_constant__ TmaDesc tx, const __grid_constant__ TmaDesc tw,            \
             bf16_t* __restrict__ h, int M, int F, int K) {                                     \
        gateup_gelu_body<NC, BNO, ST, CY>(&tx, &tw, h, M, F, K);                                 \
    }

// 128 token rows x 128 output columns (m64n256: 128 accumulators, 168 registers at 384
// threads); 192 x 64 (m64n128, 64 accumulators: 3 consumer warpgroups fit 128 registers), which
// pads e.g. 532 rows (2 views + prompt 20) to 576 instead of 640; the 192 x 64 shape in
// clusters of 2 and 4 CTAs along the columns that share the X tile by multicast.
GU_KERNEL(gateup_gelu_k, 2, 128, 4, 1)
GU_KERNEL(gateup_gelu3_k, 3, 64, 4, 1)
GU_KERNEL(gateup_gelu3_c2_k, 3, 64, 4, 2)
GU_KERNEL(gateup_gelu3_c4_k, 3, 64, 4, 4)
