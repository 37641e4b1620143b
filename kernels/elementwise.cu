/*
elementwise.cu: placeholder (to be replaced by the elementwise family).
Math:      y_i = x_i
Layout:    x [n] f32; y [n] f32
Traffic:   8 B/elem
Launch:    one thread per element, 256 per block
Reference: crates/kernels/src/elementwise/cpu.rs   Test: tests/it/elementwise.rs
*/
extern "C" __global__ void elementwise_copy_f32(const float* __restrict__ x, float* __restrict__ y, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
}
