// Skeleton of a persistent cluster decoder (docs/gpu-notes.md, "What a cluster link costs" and
// "What is left, as of v27"): the action expert's 18 layers x 10 flow steps as ONE kernel on
// NC thread-block clusters of S CTAs (one per SM), timed with the real weight bytes and GEMM
// arithmetic but placeholder data movement between the GEMMs. Answers: how long is a layer
// pass when the dependent steps are cluster barriers (plus, across clusters, two grid-wide
// links per layer) and the weight stream never waits for data?
//
// Per CTA: CW consumer warps compute (mma.sync m16n8k16, weights on the M side as in
// kernels/skinny.cu, 64 token rows), one more warp streams the CTA's weight tiles (16 KB,
// 128 rows x 64 k) through an NW-deep ring with bulk copies, in the order the layer consumes
// them, across GEMM and layer boundaries (it waits only for free ring slots). The token-row
// operand X comes per tile from global memory (L2) by cp.async. Per layer the CTAs share the
// expert's q|k|v (320 tiles), O (256), gate|up (1024) and down (512) tiles: 33 MB per layer.
// Between the GEMMs: barriers around placeholder phases (norm, RoPE, attention, norm) that
// read and write what those phases would, with the attention's arithmetic as mma.sync on
// shared memory.
// Build and run on the GPU machine (-DCW=4|8, -DS=cluster size, -DNC=clusters, -DNW, -DXD):
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o cd clusterdec.cu && ./cd
#include <cooperative_groups.h>
#include <cstdio>
#include <cstdlib>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
namespace cg = cooperative_groups;
typedef unsigned u32;
typedef unsigned long long u64;
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)
#define DEV __device__ __forceinline__

#ifndef S
#define S 16               // CTAs per cluster
#endif
#ifndef NC
#define NC 1               // clusters (each CTA takes 1 / (S * NC) of every GEMM's tiles)
#endif
const int G = S * NC;      // CTAs
#ifndef CW
#define CW 4               // consumer warps: 4 (32 weight rows x 64 tokens each) or 8 (x 32 tokens)
#endif
const int CT = CW * 32;    // consumer threads
const int NP = 4 * 4 / CW; // 16-token pairs per warp
#ifndef NW
#define NW 10              // weight ring depth (16 KB stages)
#endif
#ifndef XD
#define XD 4               // X ring depth (8 KB stages: 64 token rows x 64 k)
#endif
const int TILE = 16384;    // bytes per weight tile
const int XT = 8192;       // bytes per X tile
const int LAYERS = 18, STEPS = 10;
// tiles per CTA per GEMM (q|k|v 320, O 256, gate|up 1024, down 512 tiles of the expert layer,
// rounded up) and the GEMMs' K (for the X slices)
#define TPC(n) (((n) + G - 1) / G)
__constant__ int g_tiles[4] = {TPC(320), TPC(256), TPC(1024), TPC(512)};
__constant__ int g_k[4] = {1024, 2048, 1024, 4096};
const int TILES_PER_LAYER = TPC(320) + TPC(256) + TPC(1024) + TPC(512);

DEV u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }
DEV void mbar_init(u32 b, int n) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(b), "r"(n)); }
DEV void mbar_wait(u32 b, u32 par) {
    u32 ok = 0;
    while (!ok)
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(ok) : "r"(b), "r"(par) : "memory");
}
DEV void mbar_arrive(u32 b) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(b) : "memory"); }

// Cluster barrier among the consumer warps only (the producer warp never waits on data, so it
// cannot take part in barrier.cluster): each CTA's thread 0 arrives on the barrier of every
// CTA of the cluster; every consumer thread waits on its own CTA's barrier (count S).
DEV void consumer_cluster_barrier(u32 cbar, u32& phase) {
    asm volatile("bar.sync 1, %0;" ::"r"(CT) : "memory");
    if (threadIdx.x == 0) {
        asm volatile("fence.acq_rel.cluster;" ::: "memory");
        for (int r = 0; r < S; r++) {
            u32 remote;
            asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(cbar), "r"(r));
            asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" ::"r"(remote) : "memory");
        }
    }
    u32 ok = 0;
    while (!ok)
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(ok) : "r"(cbar), "r"(phase & 1) : "memory");
    phase++;
}
DEV void cp_async16(u32 dst, const void* src) { asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src)); }
DEV void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> DEV void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }
DEV void ldsm_x4(u32 a, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(a));
}
DEV void mma(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
DEV u32 swz(u32 base, int r, int c) { return base + r * 128 + ((c ^ (r & 7)) << 4); }

// One 128-row x 64-k weight tile against the 64 x 64 X tile: warp w takes weight rows
// (w % 4) * 32 .. + 32 and token pairs (w / 4) * NP .. + NP.
DEV void tile_mma(u32 sw, u32 sx, float (&acc)[2][2 * NP][4]) {
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3, p0 = (threadIdx.x >> 7) * NP, mi = lane >> 3;
    // All fragments of the tile first (one exposed ldmatrix latency per tile, not one per
    // mma group: with one warp per scheduler nothing else hides it), then the mma.
    u32 A[4][2][4], B[4][NP][4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        const int kc = kk * 2;
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
            const int r = warp * 32 + mt * 16 + (lane & 7) + ((mi & 1) << 3);
            ldsm_x4(swz(sw, r, kc + (mi >> 1)), A[kk][mt][0], A[kk][mt][1], A[kk][mt][2], A[kk][mt][3]);
        }
#pragma unroll
        for (int p = 0; p < NP; p++) {
            const int r = (p0 + p) * 16 + ((mi >> 1) << 3) + (lane & 7);
            ldsm_x4(swz(sx, r, kc + (mi & 1)), B[kk][p][0], B[kk][p][1], B[kk][p][2], B[kk][p][3]);
        }
    }
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int p = 0; p < NP; p++)
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                mma(acc[mt][2 * p], A[kk][mt][0], A[kk][mt][1], A[kk][mt][2], A[kk][mt][3], B[kk][p][0], B[kk][p][1]);
                mma(acc[mt][2 * p + 1], A[kk][mt][0], A[kk][mt][1], A[kk][mt][2], A[kk][mt][3], B[kk][p][2], B[kk][p][3]);
            }
}

// Grid-wide barrier among the consumer warps of all CTAs (every CTA resident: one wave).
DEV void consumer_grid_barrier(unsigned* ctr, u32& n) {
    asm volatile("bar.sync 1, %0;" ::"r"(CT) : "memory");
    n++;
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(ctr) : "memory");
        unsigned v, target = n * gridDim.x;
        do { asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(ctr) : "memory"); } while (v < target);
    }
    asm volatile("bar.sync 1, %0;" ::"r"(CT) : "memory");
}

// Placeholder phase: each consumer thread reads `rd` bytes (16 B loads, all issued before
// use) from `src` and writes `wr` bytes to `dst` (this CTA's slices).
DEV void rw_phase(const uint4* src, uint4* dst, int rd, int wr, u32& sink) {
    const int t = threadIdx.x, cta = blockIdx.x;
    uint4 acc = make_uint4(0, 0, 0, 0);
    const uint4* s = src + (size_t)cta * (rd / 16);
    for (int i = t; i < rd / 16; i += CT) { uint4 v = s[i]; acc.x ^= v.x; acc.y ^= v.y; acc.z ^= v.z; acc.w ^= v.w; }
    uint4* d = dst + (size_t)cta * (wr / 16);
    for (int i = t; i < wr / 16; i += CT) d[i] = acc;
    sink ^= acc.x;
}

struct Args {
    const char* w;       // weights: LAYERS x S CTAs x TILES_PER_LAYER tiles (each CTA's tiles contiguous)
    const __nv_bfloat16* x;  // activations the GEMMs read (64 x 4096 bf16, L2-resident)
    float* part;         // GEMM outputs (per CTA 128 x 64 fp32 per unit)
    uint4* scratch;      // placeholder phases
    u32* sink;
    unsigned* gbar;      // grid barrier counter (zeroed before each launch)
    int mode;            // 0: full skeleton; 1: GEMMs and barriers only; 2: GEMMs only (no barriers);
                         // 3: the weight stream only (consumers wait for each tile and free it);
                         // 4: GEMMs only with X never loaded (the arithmetic and the stream)
};

extern "C" __global__ void __launch_bounds__(CT + 32, 1) clusterdec_k(Args a) {
    extern __shared__ __align__(1024) unsigned char sm[];
    __shared__ __align__(8) u64 full[NW], empty[NW], cbar_s;
    cg::cluster_group cl = cg::this_cluster();
    const u32 wbase = smem_u32(sm), xbase = wbase + NW * TILE, attn_base = xbase + XD * XT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (threadIdx.x == 0) {
        for (int s = 0; s < NW; s++) { mbar_init(smem_u32(&full[s]), 1); mbar_init(smem_u32(&empty[s]), CW); }
        mbar_init(smem_u32(&cbar_s), S);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    cl.sync();  // every CTA's barriers initialised before anyone arrives remotely
    const u32 cbar = smem_u32(&cbar_s);
    u32 cphase = 0;
    const int total = STEPS * LAYERS * TILES_PER_LAYER;
    if (warp == CW) {
        // Producer: the CTA's tiles in consumption order, never waiting on data.
        if (lane == 0) {
            for (int g = 0; g < total; g++) {
                const int slot = g % NW;
                if (g >= NW) mbar_wait(smem_u32(&empty[slot]), ((g / NW) - 1) & 1);
                const int layer = (g / TILES_PER_LAYER) % LAYERS, t = g % TILES_PER_LAYER;
                const char* src = a.w + (((size_t)layer * G + blockIdx.x) * TILES_PER_LAYER + t) * TILE;
                const u32 b = smem_u32(&full[slot]);
                asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(TILE) : "memory");
                asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                             ::"r"(wbase + slot * TILE), "l"(src), "r"(TILE), "r"(b) : "memory");
            }
        }
        return;
    }
    u32 sink = 0;
    int g = 0;  // tile counter (consumption order)
    if (a.mode == 3) {
        for (; g < total; g++) {
            const int slot = g % NW;
            mbar_wait(smem_u32(&full[slot]), (g / NW) & 1);
            sink ^= *(const u32*)(sm + slot * TILE + threadIdx.x * 4);
            __syncwarp();
            if (lane == 0) mbar_arrive(smem_u32(&empty[slot]));
        }
        if (sink == 0x9e3779b9u) a.sink[0] = sink;
        return;
    }
    u32 gphase = 0;
    auto barrier = [&]() { if (a.mode < 2) consumer_cluster_barrier(cbar, cphase); };
    // the links that need every cluster's data: after O (head partials) and after down
    auto grid_barrier = [&]() { if (a.mode < 2) consumer_grid_barrier(a.gbar, gphase); };
    const int heads = 8 / NC > 0 ? 8 / NC : 1;  // heads per cluster
    for (int pass = 0; pass < STEPS * LAYERS; pass++) {
        for (int gemm = 0; gemm < 4; gemm++) {
            if (a.mode == 0) {
                // placeholder for the phase before this GEMM: norm (read partials, write xn),
                // RoPE (read partials, write q/k/v), attention (read q + K/V, mma), norm.
                // norm: this CTA's 1/S of the rows: the residual and NC partials (13 KB each)
                if (gemm == 0 || gemm == 2) rw_phase(a.scratch, a.scratch + (1 << 20), (1 + NC) * 13312, 8192, sink);
                if (gemm == 1) {
                    rw_phase(a.scratch, a.scratch + (1 << 20), 16384, 8192, sink);  // RoPE
                    barrier();
                    // attention: the cluster's heads' q (26 KB each) + 1/S of the keys' K/V
                    // (37 KB), then 30 MFLOP per head split over S CTAs on the tensor cores
                    rw_phase(a.scratch, a.scratch + (1 << 20), heads * 26624 + 37888, 0, sink);
                    float acc[2][2 * NP][4] = {};
                    for (int it = 0; it < heads * 30 / S + 1; it++) tile_mma(attn_base, attn_base, acc);
                    sink ^= __float_as_uint(acc[0][0][0]);
                }
                barrier();
            }
            const int nt = g_tiles[gemm];
            const int K = g_k[gemm];
            // X tiles: k = (tile index * 64) mod K, rows 0..63
            auto load_x = [&](int i) {
                if (a.mode == 4) return;
                const int k = (i * 64) % K;
                const u32 sx = xbase + (i % XD) * XT;
                for (int c = threadIdx.x; c < 64 * 8; c += CT) {
                    const int r = c >> 3, ch = c & 7;
                    cp_async16(swz(sx, r, ch), a.x + (size_t)r * 4096 + k + ch * 8);
                }
            };
            for (int i = 0; i < XD - 1; i++) { if (i < nt) load_x(i); cp_commit(); }
            float acc[2][2 * NP][4];
            for (int i = 0; i < nt; i++, g++) {
                if (i % 8 == 0)
#pragma unroll
                    for (int mt = 0; mt < 2; mt++)
#pragma unroll
                        for (int j = 0; j < 2 * NP; j++)
#pragma unroll
                            for (int e = 0; e < 4; e++) acc[mt][j][e] = 0.f;
                cp_wait<XD - 2>();
                const int slot = g % NW;
                mbar_wait(smem_u32(&full[slot]), (g / NW) & 1);
                asm volatile("bar.sync 1, %0;" ::"r"(CT) : "memory");  // X tile i visible to all warps
                if (i + XD - 1 < nt) load_x(i + XD - 1);
                cp_commit();
                tile_mma(wbase + slot * TILE, xbase + (i % XD) * XT, acc);
                __syncwarp();
                if (lane == 0) mbar_arrive(smem_u32(&empty[slot]));
                // a unit ends every 8 tiles (or at the GEMM's end): store its partial tile
                if (i % 8 == 7 || i == nt - 1) {
                    float* p = a.part + ((size_t)blockIdx.x * 16 + (i / 8)) * 128 * 64;
#pragma unroll
                    for (int mt = 0; mt < 2; mt++)
#pragma unroll
                        for (int j = 0; j < 2 * NP; j++) {
                            const int row = (warp & 3) * 32 + mt * 16 + (lane >> 2);
                            const int col = (warp >> 2) * NP * 16 + j * 8 + 2 * (lane & 3);
                            *(float2*)(p + row * 64 + col) = make_float2(acc[mt][j][0], acc[mt][j][1]);
                            *(float2*)(p + (row + 8) * 64 + col) = make_float2(acc[mt][j][2], acc[mt][j][3]);
                        }
                }
            }
            cp_wait<0>();
            if (gemm == 1 || gemm == 3) grid_barrier(); else barrier();
        }
    }
    // no CTA may exit while others may still arrive on its barrier
    if (a.mode < 2) consumer_cluster_barrier(cbar, cphase);
    if (sink == 0x9e3779b9u) a.sink[0] = sink;
}

int main() {
    size_t wbytes = (size_t)LAYERS * G * TILES_PER_LAYER * TILE;  // ~600 MB
    char* w;
    CK(cudaMalloc(&w, wbytes));
    CK(cudaMemset(w, 0x3c, wbytes));
    __nv_bfloat16* x;
    CK(cudaMalloc(&x, 64 * 4096 * 2));
    CK(cudaMemset(x, 0x3c, 64 * 4096 * 2));
    float* part;
    CK(cudaMalloc(&part, (size_t)G * 16 * 128 * 64 * 4));
    uint4* scratch;
    CK(cudaMalloc(&scratch, 64 << 20));
    CK(cudaMemset(scratch, 0, 64 << 20));
    u32* sink;
    CK(cudaMalloc(&sink, 4));
    unsigned* gbar;
    CK(cudaMalloc(&gbar, 4));
    int smem = NW * TILE + XD * XT + 16384;
    CK(cudaFuncSetAttribute(clusterdec_k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    CK(cudaFuncSetAttribute(clusterdec_k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeClusterDimension;
    at[0].val.clusterDim.x = S;
    at[0].val.clusterDim.y = 1;
    at[0].val.clusterDim.z = 1;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    cfg.blockDim = dim3(CT + 32);
    cfg.gridDim = dim3(G);
    cfg.dynamicSmemBytes = smem;
    // CLUSTER=0: the same CTAs launched without clusters (modes 2-4 only), spread over GPCs
    const char* ce = getenv("CLUSTER");
    const bool clustered = !(ce && ce[0] == '0');
    int maxc = 0;
    CK(cudaOccupancyMaxActiveClusters(&maxc, clusterdec_k, &cfg));
    if (!clustered) cfg.numAttrs = 0;
    printf("%d cluster(s) of %d CTAs (at most %d resident), %d consumer warps, weight ring %d x 16 KB, X ring %d x 8 KB, "
           "%d tiles per CTA per layer pass, %d layer passes\n", NC, S, maxc, CW, NW, XD, TILES_PER_LAYER, STEPS * LAYERS);
    if (clustered && maxc < NC) {
        printf("not all clusters fit at once: the grid barriers would deadlock; skipped\n");
        return 0;
    }
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const char* names[] = {"full skeleton (GEMMs + placeholder phases; per layer 2 grid links + 7 cluster links)",
                           "GEMMs + 2 grid links + 2 cluster links per layer", "GEMMs only, no barriers",
                           "weight stream only", "GEMMs only, X never loaded"};
    printf("(%s)\n| variant | decoder ms | us per layer pass | weight GB/s |\n|---|---|---|---|\n",
           clustered ? "clusters" : "no clusters: independent CTAs");
    for (int mode = clustered ? 0 : 2; mode < 5; mode++) {
        Args a{w, x, part, scratch, sink, gbar, mode};
        CK(cudaMemset(gbar, 0, 4));
        CK(cudaLaunchKernelEx(&cfg, clusterdec_k, a));
        CK(cudaDeviceSynchronize());
        CK(cudaMemset(gbar, 0, 4));
        CK(cudaEventRecord(e0));
        CK(cudaLaunchKernelEx(&cfg, clusterdec_k, a));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        double bytes = (double)STEPS * wbytes;
        printf("| %s | %.3f | %.2f | %.0f |\n", names[mode], ms, ms * 1e3 / (STEPS * LAYERS), bytes / (ms * 1e-3) / 1e9);
    }
    return 0;
}
