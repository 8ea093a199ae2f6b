// Shared helpers for every pi0 kernel. No CUDA headers: NVRTC compiles these sources
// without an include path, so bf16 is handled as raw 16-bit words.
// All math is fp32; bf16 values are rounded to nearest-even when stored.

typedef unsigned short bf16_t;
typedef unsigned int u32;
typedef unsigned long long u64;

#define DEV __device__ __forceinline__

// Programmatic dependent launch: wait for the previous kernel's results / let the next kernel
// start its prologue. Both are no-ops when the launch did not ask for it. Every kernel that
// the engine may launch as a programmatic dependent calls pdl_wait() before its first global
// memory access (read or write), so the launch attribute never changes what it computes.
#if __CUDA_ARCH__ >= 900
DEV void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
DEV void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;\n" ::); }
#else
DEV void pdl_wait() {}
DEV void pdl_trigger() {}
#endif

DEV float b2f(bf16_t x) { return __uint_as_float(((u32)x) << 16); }

DEV bf16_t f2b(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)0x7fc0;  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// fp16 (IEEE half) rounded to nearest-even, saturated to +-65504 (never Inf); NaN stays NaN.
DEV unsigned short f2h(float f) {
    unsigned short h;
    asm("cvt.rn.satfinite.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

DEV float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

DEV float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block; every thread gets the result. `sh` holds >= 32 floats.
DEV float block_sum(float v, float* sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = (lane < nw) ? sh[lane] : 0.f;
    return warp_sum(v);
}

DEV float gelu_tanh(float x) {
    const float c = 0.7978845608028654f;  // sqrt(2/pi)
    return 0.5f * x * (1.f + tanhf(c * (x + 0.044715f * x * x * x)));
}
