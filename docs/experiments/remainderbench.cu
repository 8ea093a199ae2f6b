// Are the 12 SMs outside the green-context groups slower? (BENCHMARKS.md, seventeenth session)
// The device's SMs are split once into groups of 8 (15 on an H100) plus a remainder (12), as
// src/partition/device.rs does; green contexts are made of chosen groups with or without the
// remainder, and on each, kernels record per block the SM (%smid) and the time it took
// (%globaltimer):
//   * map: which SMs each group and the remainder hold;
//   * hbm: one block per SM (or two) each streams its own 8 MiB from HBM;
//   * l2: every block reads the same 8 MiB (L2 hits);
//   * fma: a fixed chain of FMAs (no memory).
// For each partition: kernel time, blocks per SM, and the mean block time on group SMs against
// remainder SMs.
// Build and run on the GPU machine:
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -o rb remainderbench.cu -lcuda && ./rb
#include <cuda.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <vector>
#include <set>
#include <string>

#define CU(x) do { CUresult r = (x); if (r != CUDA_SUCCESS) { const char* s; cuGetErrorString(r, &s); printf("%s: %s\n", #x, s); exit(1); } } while (0)
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)

__device__ __forceinline__ unsigned smid() { unsigned r; asm volatile("mov.u32 %0, %%smid;" : "=r"(r)); return r; }
__device__ __forceinline__ unsigned long long gtime() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }

struct Rec { unsigned sm; unsigned long long ns; };

// mode 0: stream `words` float4 of block b's own region; 1: all blocks the same region (L2);
// 2: FMA chain of `words` iterations.
__global__ void probe(const float4* __restrict__ buf, size_t words, int mode, Rec* out, float* sink) {
    __syncthreads();
    unsigned long long t0 = gtime();
    float acc = 0.f;
    if (mode == 2) {
        float a = threadIdx.x * 1e-3f, b = 1.0001f;
        for (size_t i = 0; i < words; ++i) a = fmaf(a, b, 1e-7f);
        acc = a;
    } else {
        const float4* p = buf + (mode == 0 ? (size_t)blockIdx.x * words : 0);
        for (size_t i = threadIdx.x; i < words; i += blockDim.x * 4) {
            float4 v0 = __ldcg(p + i);
            float4 v1 = i + blockDim.x < words ? __ldcg(p + i + blockDim.x) : make_float4(0, 0, 0, 0);
            float4 v2 = i + 2 * blockDim.x < words ? __ldcg(p + i + 2 * blockDim.x) : make_float4(0, 0, 0, 0);
            float4 v3 = i + 3 * blockDim.x < words ? __ldcg(p + i + 3 * blockDim.x) : make_float4(0, 0, 0, 0);
            acc += v0.x + v1.y + v2.z + v3.w;
        }
    }
    __syncthreads();
    unsigned long long t1 = gtime();
    if (acc == 12345.f) sink[0] = acc;
    if (threadIdx.x == 0) out[blockIdx.x] = Rec{smid(), t1 - t0};
}

struct Part { std::string name; CUstream s; };

static CUdevice dev;
static std::vector<CUdevResource> groups;
static CUdevResource rem;

Part make(const char* name, std::vector<int> gs, bool with_rem) {
    std::vector<CUdevResource> res;
    for (int g : gs) res.push_back(groups[g]);
    if (with_rem) res.push_back(rem);
    CUdevResourceDesc d;
    CU(cuDevResourceGenerateDesc(&d, res.data(), res.size()));
    CUgreenCtx g;
    CU(cuGreenCtxCreate(&g, d, dev, CU_GREEN_CTX_DEFAULT_STREAM));
    CUstream s;
    CU(cuGreenCtxStreamCreate(&s, g, CU_STREAM_NON_BLOCKING, 0));
    return Part{name, s};
}

std::vector<int> range(int a, int b) { std::vector<int> v; for (int i = a; i < b; ++i) v.push_back(i); return v; }

int main() {
    CK(cudaFree(0));
    CU(cuDeviceGet(&dev, 0));
    CUdevResource all;
    CU(cuDeviceGetDevResource(dev, &all, CU_DEV_RESOURCE_TYPE_SM));
    unsigned n = 32;
    groups.resize(32);
    CU(cuDevSmResourceSplitByCount(groups.data(), &n, &all, &rem, 0, 8));
    groups.resize(n);
    printf("%u SMs: %u groups of 8 + %u left over\n", all.sm.smCount, n, rem.sm.smCount);

    const size_t WORDS = (8u << 20) / 16;  // 8 MiB per block
    const int MAXB = 2 * 132;
    float4* buf; CK(cudaMalloc(&buf, MAXB * WORDS * 16));
    CK(cudaMemset(buf, 0, MAXB * WORDS * 16));
    Rec* rec; CK(cudaMallocManaged(&rec, MAXB * 64 * sizeof(Rec)));
    float* sink; CK(cudaMalloc(&sink, 4));

    // Map: the SMs of each group and of the remainder.
    std::vector<int> sm_class(1024, -1);  // group index, or 99 = remainder
    for (int g = 0; g <= (int)n; ++g) {
        Part p = g < (int)n ? make("g", {g}, false) : make("rem", {}, true);
        int blocks = 256;
        probe<<<blocks, 128, 0, (cudaStream_t)p.s>>>(buf, 20000, 2, rec, sink);
        CK(cudaStreamSynchronize((cudaStream_t)p.s));
        std::set<unsigned> sms;
        for (int b = 0; b < blocks; ++b) sms.insert(rec[b].sm);
        printf("%s %2d:", g < (int)n ? "group" : "remainder", g);
        for (unsigned s : sms) { printf(" %u", s); sm_class[s] = g < (int)n ? g : 99; }
        printf("\n");
    }

    std::vector<Part> parts = {
        make("8 groups (0-7)", range(0, 8), false),
        make("7 groups (8-14)", range(8, 15), false),
        make("7 groups (8-14) + rem", range(8, 15), true),
        make("7 groups (0-6) + rem", range(0, 7), true),
        make("remainder alone", {}, true),
        make("15 groups", range(0, 15), false),
        make("15 groups + rem", range(0, 15), true),
    };
    const char* modes[] = {"hbm 8MiB/block", "l2 same 8MiB", "fma"};
    cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    printf("\n| partition | test | blocks | kernel ms | SMs used | max blocks/SM | mean block us: group SMs | remainder SMs | GB/s per group SM | per rem SM |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for (auto& p : parts) {
        // SM count of this partition: distinct SMs of a wide probe.
        probe<<<1024, 128, 0, (cudaStream_t)p.s>>>(buf, 20000, 2, rec, sink);
        CK(cudaStreamSynchronize((cudaStream_t)p.s));
        std::set<unsigned> psms; for (int b = 0; b < 1024; ++b) psms.insert(rec[b].sm);
        int S = psms.size();
        for (int mode = 0; mode < 3; ++mode) {
            for (int per : {1, 2}) {
                int blocks = S * per;
                size_t words = mode == 2 ? 200000 : WORDS;
                for (int rep = 0; rep < 3; ++rep) {
                    CK(cudaEventRecord(e0, (cudaStream_t)p.s));
                    probe<<<blocks, 512, 0, (cudaStream_t)p.s>>>(buf, words, mode, rec, sink);
                    CK(cudaEventRecord(e1, (cudaStream_t)p.s));
                    CK(cudaStreamSynchronize((cudaStream_t)p.s));
                }
                float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
                std::vector<int> cnt(1024, 0);
                double gsum = 0, rsum = 0; int gn = 0, rn = 0; int maxc = 0;
                for (int b = 0; b < blocks; ++b) {
                    cnt[rec[b].sm]++;
                    if (sm_class[rec[b].sm] == 99) { rsum += rec[b].ns; rn++; } else { gsum += rec[b].ns; gn++; }
                }
                int used = 0; for (int c : cnt) { if (c) used++; if (c > maxc) maxc = c; }
                double gus = gn ? gsum / gn / 1e3 : 0, rus = rn ? rsum / rn / 1e3 : 0;
                double bytes = mode == 2 ? 0 : words * 16.0;
                printf("| %s | %s | %d | %.3f | %d | %d | %.1f (%d) | %.1f (%d) | %.1f | %.1f |\n", p.name.c_str(), modes[mode], blocks, ms, used, maxc,
                       gus, gn, rus, rn, gus > 0 && bytes > 0 ? bytes / gus / 1e3 * per : 0, rus > 0 && bytes > 0 ? bytes / rus / 1e3 * per : 0);
            }
        }
    }
    return 0;
}
