// Aggressors of the interference study (src/partition/interference.rs): each loads one resource
// of the GPU that SM partitions do not divide (power, L2, HBM, the launch path) from one
// partition while a real stage runs on the other, so the stage's slowdown can be pinned on a
// resource. Compiled at run time by NVRTC, loaded context-independently like synthetic.cu.
//
// The long-running ones stop when *stop becomes non-zero (checked by each block once per
// pass) or after max_ns of their own, whichever comes first.

__device__ __forceinline__ unsigned long long now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// ld.global.cg: cached in the L2 only (inline PTX: no header needed under NVRTC).
__device__ __forceinline__ float4 load_cg(const float4* p) {
    float4 v;
    asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "l"(p));
    return v;
}

// One answer per block: thread 0 reads the flag and the clock, the block follows.
__device__ __forceinline__ bool block_should_stop(const volatile int* stop, unsigned long long t_end) {
    __shared__ int s;
    __syncthreads();
    if (threadIdx.x == 0) s = (*stop != 0) || now_ns() > t_end;
    __syncthreads();
    return s != 0;
}

// Arithmetic only: eight independent FMA chains per thread, no memory traffic.
extern "C" __global__ void agg_spin(const volatile int* stop, unsigned long long max_ns, float* sink) {
    unsigned long long t_end = now_ns() + max_ns;
    float v[8];
    for (int j = 0; j < 8; ++j) v[j] = 1.0f + 1.0e-3f * (threadIdx.x + j);
    while (!block_should_stop(stop, t_end)) {
        for (int k = 0; k < 2048; ++k) {
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = fmaf(v[j], 0.99990f, 1.0e-4f);
        }
    }
    float acc = 0.f;
    for (int j = 0; j < 8; ++j) acc += v[j];
    if (acc == 12345.678f) sink[0] = acc;  // never true; keeps the chains alive
}

// Reads `buf` (n4 float4) over and over, grid-stride, L1 bypassed (ld.global.cg): a buffer
// larger than the L2 loads HBM, a small one only the L2. Bytes read go to *bytes.
extern "C" __global__ void agg_read(const volatile int* stop, unsigned long long max_ns, const float4* buf,
                                    long long n4, unsigned long long* bytes, float* sink) {
    unsigned long long t_end = now_ns() + max_ns;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    float acc = 0.f;
    unsigned long long loads = 0;
    while (!block_should_stop(stop, t_end)) {
        for (int r = 0; r < 16; ++r) {
            float4 a[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                long long j = i + u * stride;
                if (j >= n4) j -= n4;
                a[u] = load_cg(buf + j);
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) acc += (a[u].x + a[u].y) + (a[u].z + a[u].w);
            i += 4 * stride;
            while (i >= n4) i -= n4;
            loads += 4;
        }
    }
    asm volatile("red.global.add.u64 [%0], %1;" ::"l"(bytes), "l"(loads * 16ull) : "memory");
    if (acc == 12345.678f) sink[0] = acc;
}

// buf[i] = hashed finite floats: data that no memory compression can shrink.
extern "C" __global__ void agg_fill(float* buf, long long n, unsigned int seed) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        unsigned int h = (unsigned int)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        buf[i] = 1.0f + (h & 0xffff) * 1.0e-5f;
    }
}

// Nothing: a launch that only occupies the front end and the block scheduler.
extern "C" __global__ void agg_empty() {}
