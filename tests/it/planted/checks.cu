/*
checks.cu: more planted bugs for ptxsim's checks — a read of shared memory nobody wrote, a misaligned load,
an out-of-bounds shared index, and a write-write race between two warps.
Math:      none worth checking; each kernel exists to trip one check.
Layout:    x [n] f32, y [n] f32.
Traffic:   a few bytes per thread.
Launch:    one block of 64 threads.
Reference: tests/it/ptxsim.rs::planted_checks   Test: tests/it/ptxsim.rs
*/
// Thread t reads s[t] but only even threads wrote their slot.
extern "C" __global__ void planted_uninit(float* y) {
    __shared__ float s[64];
    int t = threadIdx.x;
    if ((t & 1) == 0) s[t] = (float)t;
    __syncthreads();
    y[t] = s[t];
}

// A float load from a byte offset of 2.
extern "C" __global__ void planted_misaligned(const float* x, float* y) {
    int t = threadIdx.x;
    const float* p = (const float*)((const char*)x + 2);
    y[t] = p[t];
}

// Index 64 of a 64-element shared array.
extern "C" __global__ void planted_shared_oob(const int* idx, float* y) {
    __shared__ float s[64];
    int t = threadIdx.x;
    s[t] = 1.0f;
    __syncthreads();
    y[t] = s[idx[t]];
}

// Every thread writes s[t % 32]: warps 0 and 1 write the same slots with no barrier between.
extern "C" __global__ void planted_write_race(float* y) {
    __shared__ float s[32];
    int t = threadIdx.x;
    s[t % 32] = (float)t;
    __syncthreads();
    y[t] = s[t % 32];
}
