/*
race.cu: planted bug — each thread writes s[t] and reads its neighbour's s[t + 1] with no __syncthreads()
between, so the read races with the neighbour's write.
Math:      y[i] = x[i] + x[i + 1] within a block (the last thread of a block reads its own element).
Layout:    x [n] f32, y [n] f32.
Traffic:   8 bytes per element.
Launch:    blocks of 64 threads.
Reference: tests/it/ptxsim.rs::planted_race   Test: tests/it/ptxsim.rs
*/
extern "C" __global__ void planted_race(const float* x, float* y, int n) {
    __shared__ float s[64];
    int t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    // Missing: __syncthreads();
    float right = s[t + 1 < blockDim.x ? t + 1 : t];
    if (i < n) y[i] = s[t] + right;
}
