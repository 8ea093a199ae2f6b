// Placeholder (replaced by the weight-streaming skinny GEMM).
extern "C" __global__ void skinny_gemm_k(int unused) {}
