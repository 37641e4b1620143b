/*
cp_async.cu: planted bug — each thread starts a cp.async of x[t] into s[t] and commits it, but nobody waits
(cp.async.wait_group) before __syncthreads(), so reading a neighbour's s[t + 1] may see the copy unfinished.
planted_cp_async_ok is the same kernel with the wait, which must pass.
Math:      y[t] = x[(t + 1) mod 64].
Layout:    x [64] f32, y [64] f32.
Traffic:   8 bytes per thread.
Launch:    one block of 64 threads.
Reference: tests/it/ptxsim.rs::planted_cp_async   Test: tests/it/ptxsim.rs
*/
__device__ void copy_async4(float* dst, const float* src) {
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src));
    asm volatile("cp.async.commit_group;\n" ::);
}

extern "C" __global__ void planted_cp_async(const float* x, float* y) {
    __shared__ float s[64];
    int t = threadIdx.x;
    copy_async4(&s[t], x + t);
    // Missing: asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
    y[t] = s[(t + 1) % 64];
}

extern "C" __global__ void planted_cp_async_ok(const float* x, float* y) {
    __shared__ float s[64];
    int t = threadIdx.x;
    copy_async4(&s[t], x + t);
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
    y[t] = s[(t + 1) % 64];
}
