// mma.sync m16n8k16 bf16 rate per SM on this GPU, by warps per SM and independent accumulator
// chains per warp (operands in registers, no memory traffic): is the decoder GEMMs' inner loop
// (docs/gpu-notes.md, clusterdec.cu: ~1.4 TF/s per SM with one warp per scheduler) at the
// tensor pipe's limit or at its latency?
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o mb mmabench.cu && ./mb
#include <cstdio>
#include <cuda_runtime.h>
typedef unsigned u32;
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

template <int CH>
__global__ void mma_k(float* out, int iters, u32 seed) {
    float acc[CH][4] = {};
    u32 a0 = seed ^ threadIdx.x, a1 = a0 * 3, a2 = a0 * 5, a3 = a0 * 7, b0 = a0 * 11, b1 = a0 * 13;
    for (int i = 0; i < iters; i++) {
#pragma unroll
        for (int c = 0; c < CH; c++)
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                         : "+f"(acc[c][0]), "+f"(acc[c][1]), "+f"(acc[c][2]), "+f"(acc[c][3])
                         : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
    float s = 0;
#pragma unroll
    for (int c = 0; c < CH; c++) s += acc[c][0] + acc[c][1] + acc[c][2] + acc[c][3];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

template <int CH>
int run(float* out, cudaEvent_t e0, cudaEvent_t e1, int sms) {
    for (int warps : {4, 8, 16, 32}) {
        int iters = 4096;
        mma_k<CH><<<sms, warps * 32>>>(out, 16, 1);
        CK(cudaDeviceSynchronize());
        CK(cudaEventRecord(e0));
        mma_k<CH><<<sms, warps * 32>>>(out, iters, 1);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        double flop = 4096.0 * CH * iters * warps * sms;
        printf("| %d | %d | %.2f | %.0f |\n", warps, CH, flop / (ms * 1e-3) / 1e12 / sms, flop / (ms * 1e-3) / 1e12);
    }
    return 0;
}

int main() {
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    float* out;
    CK(cudaMalloc(&out, 132 * 1024 * 4));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    printf("one CTA per SM, %d SMs\n| warps per SM | independent chains per warp | TF/s per SM | TF/s |\n|---|---|---|---|\n", sms);
    run<1>(out, e0, e1, sms);
    run<4>(out, e0, e1, sms);
    run<16>(out, e0, e1, sms);
    return 0;
}
