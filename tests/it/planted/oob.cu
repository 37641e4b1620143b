/*
oob.cu: planted bug — the bounds check is `i <= n`, so thread n writes one element past the end of `y`.
Math:      y[i] = 2·x[i] for i < n (and, wrongly, i == n).
Layout:    x [n] f32, y [n] f32.
Traffic:   8 bytes per element.
Launch:    enough threads to cover n + 1 elements.
Reference: tests/it/ptxsim.rs::planted_out_of_bounds   Test: tests/it/ptxsim.rs
*/
extern "C" __global__ void planted_oob(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) {
        float v = i < n ? x[i] : 0.0f;
        y[i] = 2.0f * v;
    }
}
