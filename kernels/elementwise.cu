// Small fused element-wise kernels: image patches, token embedding, GELU-gate, the action
// input branch, the state token and the fused final-norm + out-proj + Euler update.

// Images [nv][S][S][3] bf16 in [-1,1] (rounded on the host while checked) -> patch rows
// [nv*T][pd_pad] bf16 ordered (c, ky, kx) like the conv weight (out, 3, p, p); also seeds the
// residual x with the position embedding.
extern "C" __global__ void patchify_k(const bf16_t* __restrict__ img, bf16_t* __restrict__ patches,
                                      const bf16_t* __restrict__ pos, float* __restrict__ x,
                                      int S, int p, int pd_pad, int W) {
    const int tok = blockIdx.x;
    const int side = S / p, T = side * side;
    const int v = tok / T, t = tok % T;
    const int py = t / side, px = t % side;
    const int pp = p * p, pd = 3 * pp;
    for (int i = threadIdx.x; i < pd_pad; i += blockDim.x) {
        bf16_t val = 0;
        if (i < pd) {
            const int c = i / pp, r = i % pp, ky = r / p, kx = r % p;
            val = img[(((size_t)v * S + py * p + ky) * S + px * p + kx) * 3 + c];
        }
        patches[(size_t)tok * pd_pad + i] = val;
    }
    for (int i = threadIdx.x; i < W; i += blockDim.x) x[(size_t)tok * W + i] = b2f(pos[(size_t)t * W + i]);
}

// Prompt token rows of the fp32 residual stream: embedding x scale (sqrt(width)).
extern "C" __global__ void embed_k(const int* __restrict__ ids, const bf16_t* __restrict__ table,
                                   float* __restrict__ out, int width, float scale) {
    pdl_wait();
    pdl_trigger();
    const size_t id = (size_t)ids[blockIdx.x];
    for (int i = threadIdx.x; i < width; i += blockDim.x)
        out[(size_t)blockIdx.x * width + i] = b2f(table[id * width + i]) * scale;
}

// h = gelu_tanh(gate) * up; gu rows are [gate (F) | up (F)]. 8 outputs per thread.
extern "C" __global__ void gelu_mul_k(const bf16_t* __restrict__ gu, bf16_t* __restrict__ h,
                                      int rows, int F) {
    pdl_wait();
    pdl_trigger();
    const size_t i8 = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) * 8;
    const size_t total = (size_t)rows * F;
    if (i8 >= total) return;
    const size_t r = i8 / F, c = i8 % F;
    const bf16_t* g = gu + r * 2 * F + c;
    const bf16_t* u = g + F;
    if ((F & 7) == 0) {
        uint4 gv = *(const uint4*)g, uv = *(const uint4*)u, ov;
        const bf16_t* ga = (const bf16_t*)&gv;
        const bf16_t* ua = (const bf16_t*)&uv;
        bf16_t* oa = (bf16_t*)&ov;
#pragma unroll
        for (int j = 0; j < 8; j++) oa[j] = f2b(gelu_tanh(b2f(ga[j])) * b2f(ua[j]));
        *(uint4*)(h + i8) = ov;
    } else {
        for (int j = 0; j < 8 && i8 + j < total; j++) {
            const size_t rr = (i8 + j) / F, cc = (i8 + j) % F;
            h[i8 + j] = f2b(gelu_tanh(b2f(gu[rr * 2 * F + cc])) * b2f(gu[rr * 2 * F + F + cc]));
        }
    }
}

// Action branch of one flow step, with action_in_proj o action_time_mlp_in pre-multiplied:
// out[c] = swish(x_t[c] . Wf^T + tb), Wf [E][A] f32, tb [E] f32 (time embedding, biases).
// Block 0 also copies the state token row into the residual's row 0.
extern "C" __global__ void action_in_k(const float* __restrict__ x_t, const float* __restrict__ wf,
                                       const float* __restrict__ tb, bf16_t* __restrict__ out,
                                       const float* __restrict__ state_row,
                                       float* __restrict__ x0, int A, int E) {
    pdl_wait();
    pdl_trigger();
    __shared__ float xs[128];
    const int c = blockIdx.x;
    for (int a = threadIdx.x; a < A; a += blockDim.x) xs[a] = x_t[(size_t)c * A + a];
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        float acc = tb[e];
        const float* w = wf + (size_t)e * A;
        for (int a = 0; a < A; a++) acc += w[a] * xs[a];
        out[(size_t)c * E + e] = f2b(acc / (1.f + __expf(-acc)));
    }
    if (c == 0)
        for (int e = threadIdx.x; e < E; e += blockDim.x) x0[e] = state_row[e];
}

// State token: out = W_state . state + b (f32 weights), one block.
extern "C" __global__ void state_proj_k(const float* __restrict__ state, const float* __restrict__ w,
                                        const float* __restrict__ b, float* __restrict__ out,
                                        int A, int E) {
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        float acc = b[e];
        for (int a = 0; a < A; a++) acc += w[(size_t)e * A + a] * state[a];
        out[e] = acc;
    }
}

// Final expert RMSNorm ((1+w) folded into W) + action_out_proj + Euler step, one block per action
// row: x_t[c] += dt * (rmsnorm(x[c]) . W^T + b). x_t stays fp32.
extern "C" __global__ void out_euler_k(const float* __restrict__ x, const float* __restrict__ w,
                                       const float* __restrict__ b, float* __restrict__ x_t,
                                       int E, int A, float eps, float dt) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float row[];
    __shared__ float red[32];
    const int c = blockIdx.x;
    const float* xr = x + (size_t)c * E;
    float s = 0.f;
    for (int i = threadIdx.x; i < E; i += blockDim.x) {
        float v = xr[i];
        row[i] = v;
        s += v * v;
    }
    const float r = rsqrtf(block_sum(s, red) / (float)E + eps);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int a = warp; a < A; a += nw) {
        float acc = 0.f;
        for (int i = lane; i < E; i += 32) acc += row[i] * w[(size_t)a * E + i];
        acc = warp_sum(acc);
        if (lane == 0) x_t[(size_t)c * A + a] += dt * (acc * r + b[a]);
    }
}
