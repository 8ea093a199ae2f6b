// Test kernels of the SM-partition layer (src/partition/). Compiled at run time by NVRTC and
// loaded context-independently (cuLibraryLoadData), so that they launch in green contexts and
// in MPS execution-affinity contexts alike.
//
// * smid_probe:   records the SM each block ran on (the confinement proof).
// * enc_layer:    a compute-bound stand-in for the encoder (dependent FMA chains, one layer).
// * dec_reduce /
//   dec_update:   a memory- and launch-bound stand-in for the decoder: each "layer" streams a
//                 slice of a large weight buffer and a slice of the prefix, then updates the
//                 action chunk x. Every reduction has a fixed order, so the result is bitwise
//                 independent of how many SMs run it.

extern "C" __global__ void smid_probe(unsigned int* out, long long spin_cycles) {
    unsigned int smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    long long t0 = clock64();
    while (clock64() - t0 < spin_cycles) {
    }
    if (threadIdx.x == 0) out[blockIdx.x] = smid;
}

// prefix[i] = f_iters(src[i]); layer 0 reads the observation, later layers work in place.
extern "C" __global__ void enc_layer(const float* src, float* prefix, int n, int iters, float salt) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float a = src[i];
    float b = 0.25f + salt;
    float c = 0.5f * a;
    float d = -0.125f;
    for (int k = 0; k < iters; ++k) {
        a = fmaf(a, 0.9990f, b * 1.0e-3f);
        b = fmaf(b, -0.5000f, 0.25f * a);
        c = fmaf(c, 0.9995f, d * 1.0e-3f);
        d = fmaf(d, -0.5000f, 0.25f * c);
    }
    prefix[i] = 0.5f * (a + c) + 0.01f * (b + d);
}

// One block per slice: partial[b] = a fixed-order reduction over its weight slice and prefix slice.
extern "C" __global__ void dec_reduce(const float* w, long long w_len, const float* prefix, int prefix_len,
                                      const float* x, int x_len, float* partial) {
    __shared__ float sw[256];
    __shared__ float sp[256];
    int b = blockIdx.x, nb = gridDim.x, t = threadIdx.x;
    long long w_per = w_len / nb;
    const float4* w4 = reinterpret_cast<const float4*>(w + (long long)b * w_per);
    long long n4 = w_per / 4;
    float acc = 0.f;
    for (long long i = t; i < n4; i += blockDim.x) {
        float4 v = w4[i];
        acc += (v.x + v.y) + (v.z + v.w);
    }
    int p_per = prefix_len / nb;
    float pacc = 0.f;
    for (int i = t; i < p_per; i += blockDim.x) pacc += prefix[b * p_per + i];
    sw[t] = acc;
    sp[t] = pacc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) {
            sw[t] += sw[t + s];
            sp[t] += sp[t + s];
        }
        __syncthreads();
    }
    if (t == 0) partial[b] = sw[0] * 1.0e-7f * (1.0f + 1.0e-3f * x[b % x_len]) + sp[0] * 1.0e-4f;
}

extern "C" __global__ void dec_update(float* x, int x_len, const float* partial, int nb, const float* state,
                                      int state_len, float dt) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= x_len) return;
    float v = 0.1f * x[j] + partial[j % nb] + 0.01f * state[j % state_len];
    x[j] = x[j] - dt * v;
}
