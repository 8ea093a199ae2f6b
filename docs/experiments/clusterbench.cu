// Cluster-link and per-SM streaming microbenchmark (docs/gpu-notes.md, "What a cluster link
// costs"): can a decoder built from thread-block clusters (links through distributed shared
// memory instead of kernel boundaries or global flags) beat the ~2.7 us per link of linkbench.cu?
//  1. cluster link: each CTA writes 4 KB to its shared memory, cluster barrier, then reads 4 KB
//     gathered from all S CTAs of its cluster (an all-gather, as a GEMM's activation would be).
//  2. grid link (as linkbench's persistent barrier) in the same kernel shape, for the ratio.
//  3. streaming: C CTAs each pull their share of 256 MiB from HBM with cp.async.bulk into a
//     4 x 32 KiB shared-memory ring: the bandwidth a few SMs can draw alone.
// Build and run on the GPU machine:
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -o cb clusterbench.cu && ./cb
#include <cooperative_groups.h>
#include <cstdio>
#include <initializer_list>
#include <cuda_runtime.h>
namespace cg = cooperative_groups;
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

const int LINKS = 2000;
const int WORDS = 1024;  // floats per CTA per link (4 KB)

// 1: links through the cluster. Shared buffers double-buffered by link parity. mode 0: the
// barrier alone; 1: all-gather with each thread's 8 remote loads issued back to back; 2: the
// same loads one after the other (each waits for the previous: the naive loop).
__global__ void cluster_link_k(float* out, int links, int mode) {
    __shared__ float buf[2][WORDS];
    cg::cluster_group cl = cg::this_cluster();
    int S = cl.num_blocks(), r = cl.block_rank();
    float acc = r;
    for (int i = threadIdx.x; i < WORDS; i += blockDim.x) buf[0][i] = acc + i;
    cl.sync();
    const int PER_T = WORDS / 128;  // 8 floats per thread (blockDim 128)
    for (int l = 0; l < links; l++) {
        float* src = buf[l & 1];
        float* dst = buf[(l + 1) & 1];
        int per = WORDS / S;
        float s = 0.f;
        if (mode == 1) {
            float v[PER_T];
#pragma unroll
            for (int j = 0; j < PER_T; j++) {
                int i = threadIdx.x + j * 128;
                v[j] = *cl.map_shared_rank(src + i, i / per);
            }
#pragma unroll
            for (int j = 0; j < PER_T; j++) s += v[j];
        } else if (mode == 2) {
            for (int j = 0; j < PER_T; j++) {
                int i = threadIdx.x + j * 128;
                s = s * 0.5f + *cl.map_shared_rank(src + i + (int)(s * 0.f), i / per);
            }
        }
        for (int i = threadIdx.x; i < WORDS; i += blockDim.x) dst[i] = s * 0.5f + i;
        cl.sync();
        acc += s;
    }
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

// 2: grid-wide links (release/acquire counter), each reading 4 KB another CTA wrote.
__global__ void grid_link_k(float* a, float* b, unsigned* ctr, int links) {
    int G = gridDim.x, cta = blockIdx.x;
    for (int p = 0; p < links; p++) {
        const float* x = (p & 1) ? b : a;
        float* y = (p & 1) ? a : b;
        int src = (cta + 7) % G;
        for (int i = threadIdx.x; i < WORDS; i += blockDim.x) y[cta * WORDS + i] = x[src * WORDS + i] * 1.0001f + p;
        __syncthreads();
        if (threadIdx.x == 0) {
            asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(ctr) : "memory");
            unsigned v, target = (unsigned)G * (p + 1);
            do { asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(ctr) : "memory"); } while (v < target);
        }
        __syncthreads();
    }
}

// 3: each CTA streams bytes [cta*share, (cta+1)*share) through a 4-stage bulk-copy ring.
const int STAGE = 32 * 1024, NST = 4;
__global__ void stream_k(const char* src, size_t share, unsigned* sink) {
    extern __shared__ __align__(128) char ring[];
    __shared__ __align__(8) unsigned long long bar[NST];
    const char* base = src + (size_t)blockIdx.x * share;
    int n = (int)(share / STAGE);
    if (threadIdx.x == 0) {
        for (int s = 0; s < NST; s++) {
            unsigned a = (unsigned)__cvta_generic_to_shared(&bar[s]);
            asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(a));
        }
        asm volatile("fence.mbarrier_init.release.cluster;");
    }
    __syncthreads();
    auto issue = [&](int i) {
        int s = i % NST;
        unsigned b = (unsigned)__cvta_generic_to_shared(&bar[s]);
        unsigned d = (unsigned)__cvta_generic_to_shared(ring + s * STAGE);
        asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(b), "r"(STAGE) : "memory");
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                     ::"r"(d), "l"(base + (size_t)i * STAGE), "r"(STAGE), "r"(b) : "memory");
    };
    if (threadIdx.x == 0)
        for (int i = 0; i < NST && i < n; i++) issue(i);
    unsigned x = 0;
    for (int i = 0; i < n; i++) {
        int s = i % NST;
        unsigned b = (unsigned)__cvta_generic_to_shared(&bar[s]);
        unsigned par = (i / NST) & 1, done = 0;
        while (!done)
            asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                         : "=r"(done) : "r"(b), "r"(par) : "memory");
        x ^= ((const unsigned*)(ring + s * STAGE))[threadIdx.x];
        __syncthreads();
        if (threadIdx.x == 0 && i + NST < n) issue(i + NST);
    }
    if (x == 0x12345678u) sink[0] = x;
}

int main() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
    float* out;
    CK(cudaMalloc(&out, 1024 * sizeof(float)));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaFuncSetAttribute(cluster_link_k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    printf("\n1. cluster link (cluster barrier; + 4 KB all-gather through DSMEM)\n");
    printf("| cluster size | clusters | CTAs | max active clusters | barrier only | gather, loads batched | gather, loads serial (us per link) |\n|---|---|---|---|---|---|---|\n");
    int sizes[] = {2, 4, 8, 16};
    for (int S : sizes) {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeClusterDimension;
        at[0].val.clusterDim.x = S;
        at[0].val.clusterDim.y = 1;
        at[0].val.clusterDim.z = 1;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        cfg.blockDim = dim3(128);
        cfg.gridDim = dim3(S);
        int maxc = 0;
        if (cudaOccupancyMaxActiveClusters(&maxc, cluster_link_k, &cfg) != cudaSuccess) { cudaGetLastError(); maxc = -1; }
        for (int G : {1, 128 / S}) {
            printf("| %d | %d | %d | %d |", S, G, G * S, maxc);
            cfg.gridDim = dim3(G * S);
            for (int mode = 0; mode < 3; mode++) {
                cudaError_t err = cudaLaunchKernelEx(&cfg, cluster_link_k, out, 10, mode);
                if (err != cudaSuccess) { printf(" launch: %s |", cudaGetErrorString(err)); cudaGetLastError(); continue; }
                CK(cudaDeviceSynchronize());
                CK(cudaEventRecord(e0));
                CK(cudaLaunchKernelEx(&cfg, cluster_link_k, out, LINKS, mode));
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                float ms;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                printf(" %.3f |", ms * 1e3f / LINKS);
            }
            printf("\n");
        }
    }
    printf("\n2. grid link (release/acquire counter, 4 KB read + write per CTA)\n| CTAs | us per link |\n|---|---|\n");
    float *a, *b;
    unsigned* ctr;
    CK(cudaMalloc(&a, 132 * WORDS * 4));
    CK(cudaMalloc(&b, 132 * WORDS * 4));
    CK(cudaMalloc(&ctr, 4));
    for (int G : {16, 64, 128, 132}) {
        CK(cudaMemset(ctr, 0, 4));
        CK(cudaEventRecord(e0));
        grid_link_k<<<G, 128>>>(a, b, ctr, LINKS);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        printf("| %d | %.3f |\n", G, ms * 1e3f / LINKS);
    }
    printf("\n3. streaming 256 MiB from HBM, 4 x 32 KiB bulk-copy ring per CTA, one CTA per SM\n| CTAs | GB/s | GB/s per CTA |\n|---|---|---|\n");
    size_t total = 256ull << 20;  // 5x the L2: the repeat run finds almost nothing there
    char* src;
    unsigned* sink;
    CK(cudaMalloc(&src, total + (1 << 20)));
    CK(cudaMemset(src, 1, total));
    CK(cudaMalloc(&sink, 4));
    int smem = STAGE * NST;
    CK(cudaFuncSetAttribute(stream_k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    for (int C : {8, 16, 32, 64, 128, 132}) {
        size_t share = (total / C) / STAGE * STAGE;
        for (int rep = 0; rep < 2; rep++) {
            CK(cudaEventRecord(e0));
            stream_k<<<C, 256, smem>>>(src, share, sink);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (rep == 1) {
                double gbs = (double)share * C / (ms * 1e-3) / 1e9;
                printf("| %d | %.0f | %.1f |\n", C, gbs, gbs / C);
            }
        }
    }
    CK(cudaGetLastError());
    return 0;
}
