// Link-cost microbenchmark (docs/gpu-notes.md v17): one dependency between CTAs as a kernel
// boundary in a CUDA graph (with and without programmatic dependent launch) vs a grid-wide barrier
// in one persistent kernel. Each link reads 4 KB another CTA wrote and writes 4 KB.
// Build and run on the GPU machine: nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -o lb linkbench.cu && ./lb
// H100 (2026-11-24): graph 3.05 us per link, graph + PDL 2.71 us, persistent barrier 3.02 us
// (66 or 132 CTAs alike). 2026-11-25, point-to-point flags (p2p_k): 2.93 us at fan-in 1,
// 3.27 at 8, 3.57 at 32, 4.93 at 128 (132 CTAs): no cheaper than a PDL boundary.
// Cost of one dependency link: PDL kernel boundary in a graph vs grid barrier in a persistent kernel.
#include <cstdio>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)
const int N = 1000;       // links
const int WORDS = 1024;   // floats per CTA per phase

__device__ __forceinline__ void work(const float* a, float* b, int cta, int G, int phase) {
    // read a slice written by a different CTA in the previous phase, write own slice
    int src = (cta + 7) % G;
    for (int i = threadIdx.x; i < WORDS; i += blockDim.x)
        b[cta * WORDS + i] = a[src * WORDS + i] * 1.0001f + phase;
}

__global__ void link_k(const float* a, float* b, int phase, int pdl) {
    if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory");
    if (pdl) asm volatile("griddepcontrol.launch_dependents;");
    work(a, b, blockIdx.x, gridDim.x, phase);
}

__device__ __forceinline__ void grid_barrier(unsigned* ctr, unsigned target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(ctr) : "memory");
        unsigned v;
        do { asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(ctr) : "memory"); } while (v < target);
    }
    __syncthreads();
}

__global__ void persist_k(float* a, float* b, unsigned* ctr, int n) {
    for (int p = 0; p < n; p++) {
        const float* x = (p & 1) ? b : a;
        float* y = (p & 1) ? a : b;
        work(x, y, blockIdx.x, gridDim.x, p);
        grid_barrier(ctr, (unsigned)(p + 1) * gridDim.x);
    }
}

// Fine-grained dependencies (a megakernel's way): each CTA waits only for the CTAs whose data
// it reads (`fanin` producers: flags[c] = phases CTA c has finished), not for the whole grid.
// Timing only: the write-after-read hazard on the alternating buffers is not fenced.
__global__ void p2p_k(float* a, float* b, unsigned* flags, int n, int fanin) {
    const int G = gridDim.x, cta = blockIdx.x;
    for (int p = 0; p < n; p++) {
        if (p > 0 && threadIdx.x < fanin) {
            const int src = (cta + 7 + threadIdx.x * 13) % G;
            unsigned v;
            do { asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flags + src) : "memory"); } while (v < (unsigned)p);
        }
        __syncthreads();
        const float* x = (p & 1) ? b : a;
        float* y = (p & 1) ? a : b;
        work(x, y, cta, G, p);
        __syncthreads();
        if (threadIdx.x == 0) asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(flags + cta), "r"((unsigned)p + 1) : "memory");
    }
}

int main() {
    float *a, *b; unsigned* ctr;
    CK(cudaMalloc(&a, 264 * WORDS * 4)); CK(cudaMalloc(&b, 264 * WORDS * 4)); CK(cudaMalloc(&ctr, 4096));
    CK(cudaMemset(a, 0, 264 * WORDS * 4));
    cudaStream_t s; CK(cudaStreamCreate(&s));
    cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    for (int G : {66, 132}) for (int pdl = 0; pdl < 2; pdl++) {
        cudaGraph_t g; cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        for (int p = 0; p < N; p++) {
            cudaLaunchConfig_t cfg = {};
            cfg.gridDim = G; cfg.blockDim = 128; cfg.stream = s;
            cudaLaunchAttribute at[1];
            at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
            at[0].val.programmaticStreamSerializationAllowed = 1;
            cfg.attrs = at; cfg.numAttrs = pdl;
            const float* x = (p & 1) ? b : a; float* y = (p & 1) ? a : b;
            CK(cudaLaunchKernelEx(&cfg, link_k, x, y, p, pdl));
        }
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        float best = 1e9;
        for (int r = 0; r < 6; r++) {
            CK(cudaEventRecord(e0, s)); CK(cudaGraphLaunch(ge, s)); CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1)); float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); if (r && ms < best) best = ms;
        }
        printf("graph G=%d pdl=%d: %.3f us per link\n", G, pdl, best * 1000 / N);
    }
    for (int G : {66, 132}) {
        float best = 1e9;
        for (int r = 0; r < 6; r++) {
            CK(cudaMemsetAsync(ctr, 0, 4, s));
            CK(cudaEventRecord(e0, s)); persist_k<<<G, 128, 0, s>>>(a, b, ctr, N); CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1)); CK(cudaGetLastError()); float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); if (r && ms < best) best = ms;
        }
        printf("persistent G=%d: %.3f us per barrier\n", G, best * 1000 / N);
    }
    for (int G : {66, 132}) for (int fanin : {1, 8, 32, 128}) {
        if (fanin > G) continue;
        float best = 1e9;
        for (int r = 0; r < 6; r++) {
            CK(cudaMemsetAsync(ctr, 0, 4096, s));
            CK(cudaEventRecord(e0, s)); p2p_k<<<G, 128, 0, s>>>(a, b, ctr, N, fanin); CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1)); CK(cudaGetLastError()); float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); if (r && ms < best) best = ms;
        }
        printf("point-to-point G=%d fan-in %d: %.3f us per link\n", G, fanin, best * 1000 / N);
    }
    return 0;
}
