/*
softmax.cu: row softmax over the last dim, forward and backward, f32 and bf16 (bf16 storage, f32 math).
Math:      forward  y_rc = exp(x_rc − m_r) / Σ_c exp(x_rc − m_r), m_r = max_c x_rc (online: one pass for m and Σ);
           backward dx_rc = y_rc·(dy_rc − Σ_c dy_rc·y_rc).
Layout:    x, y, dy, dx [rows, cols] row-major, contiguous.
Traffic:   minimum: forward reads x and writes y → 2·s B/elem; backward reads y, dy and writes dx → 3·s B/elem
           (s = 4 for f32, 2 for bf16). The kernels read each row twice; the second read hits L1/L2 for rows up to
           tens of KiB → memory-bound, ~1 exp per element forward.
Launch:    rows ≤ 2048 long: one warp per row, 256 threads (8 rows) per block, grid = ceil(rows/8); longer rows
           ("_long" entries): one 256-thread block per row, grid = rows, warp partials merged through shared
           memory. Any cols ≥ 1 works with either; the launcher picks by length.
Reference: crates/kernels/src/softmax/cpu.rs::{forward, backward}   Test: tests/it/softmax.rs
*/
#include "common.cuh"

namespace {

using rf::from_f32;
using rf::to_f32;
using bf16 = __nv_bfloat16;

constexpr unsigned kWarpsPerBlock = 8;

// ---------------------------------------------------------------------------------------------------------------
// Device helpers.

// Merges two online-softmax partials (max m, Σ exp(x − m) s) into `m`, `s`. A partial that saw no element has
// m = −inf and s = 0; scaling it by exp(−inf − m) would be NaN when both are empty, so it is skipped instead.
__device__ __forceinline__ void merge(float& m, float& s, float mo, float so) {
    const float mn = fmaxf(m, mo);
    if (mn == rf::neg_inf()) return;
    s = (m == rf::neg_inf() ? 0.0f : s * expf(m - mn)) + (mo == rf::neg_inf() ? 0.0f : so * expf(mo - mn));
    m = mn;
}

// The row this thread's warp owns, or `rows` when the warp has none.
__device__ __forceinline__ unsigned warp_row() { return blockIdx.x * kWarpsPerBlock + threadIdx.x / 32; }

// ---------------------------------------------------------------------------------------------------------------
// Kernels.

template <typename T>
__device__ __forceinline__ void forward(const T* __restrict__ x,  // [rows, cols] row-major
                                        T* __restrict__ y,        // [rows, cols] row-major
                                        unsigned rows, unsigned cols) {
    const unsigned row = warp_row();
    if (row >= rows) return;  // Uniform across the warp: the shuffles below see all 32 lanes.
    const unsigned lane = threadIdx.x % 32;
    const T* xr = x + (unsigned long long)row * cols;
    T* yr = y + (unsigned long long)row * cols;

    float m = rf::neg_inf(), s = 0.0f;
    for (unsigned c = lane; c < cols; c += 32) {
        // One exp per element: rescale the sum only when the max grows. An element ≤ m = −∞ is itself −∞ and
        // adds nothing (exp(−∞ − (−∞)) would be NaN).
        const float v = to_f32(xr[c]);
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else if (m != rf::neg_inf()) {
            s += expf(v - m);
        }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float mo = __shfl_xor_sync(0xffffffffu, m, offset);
        const float so = __shfl_xor_sync(0xffffffffu, s, offset);
        merge(m, s, mo, so);
    }
    const float inv = 1.0f / s;
    for (unsigned c = lane; c < cols; c += 32) yr[c] = from_f32<T>(expf(to_f32(xr[c]) - m) * inv);
}

template <typename T>
__device__ __forceinline__ void backward(const T* __restrict__ y,   // [rows, cols] row-major (forward output)
                                         const T* __restrict__ dy,  // [rows, cols] row-major
                                         T* __restrict__ dx,        // [rows, cols] row-major
                                         unsigned rows, unsigned cols) {
    const unsigned row = warp_row();
    if (row >= rows) return;  // Uniform across the warp.
    const unsigned lane = threadIdx.x % 32;
    const unsigned long long base = (unsigned long long)row * cols;

    float dot = 0.0f;
    for (unsigned c = lane; c < cols; c += 32) dot += to_f32(dy[base + c]) * to_f32(y[base + c]);
    dot = rf::warp_sum(dot);
    for (unsigned c = lane; c < cols; c += 32) {
        const float yc = to_f32(y[base + c]);
        dx[base + c] = from_f32<T>(yc * (to_f32(dy[base + c]) - dot));
    }
}

// Block-per-row forms for long rows: each of the 256 threads strides over the row, warps reduce with shuffles,
// and the 8 warp partials meet in shared memory (every thread then merges the same 8 values).
constexpr unsigned kBlockThreads = 256;

template <typename T>
__device__ __forceinline__ void forward_long(const T* __restrict__ x,  // [rows, cols] row-major
                                             T* __restrict__ y,        // [rows, cols] row-major
                                             unsigned rows, unsigned cols) {
    __shared__ float part_m[kBlockThreads / 32], part_s[kBlockThreads / 32];
    const unsigned row = blockIdx.x;
    if (row >= rows) return;  // Uniform across the block: the barrier below sees every thread.
    const T* xr = x + (unsigned long long)row * cols;
    T* yr = y + (unsigned long long)row * cols;

    float m = rf::neg_inf(), s = 0.0f;
    for (unsigned c = threadIdx.x; c < cols; c += kBlockThreads) {
        const float v = to_f32(xr[c]);
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else if (m != rf::neg_inf()) {
            s += expf(v - m);
        }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float mo = __shfl_xor_sync(0xffffffffu, m, offset);
        const float so = __shfl_xor_sync(0xffffffffu, s, offset);
        merge(m, s, mo, so);
    }
    if (threadIdx.x % 32 == 0) {
        part_m[threadIdx.x / 32] = m;
        part_s[threadIdx.x / 32] = s;
    }
    __syncthreads();
    m = part_m[0];
    s = part_s[0];
#pragma unroll
    for (unsigned w = 1; w < kBlockThreads / 32; ++w) merge(m, s, part_m[w], part_s[w]);
    const float inv = 1.0f / s;
    for (unsigned c = threadIdx.x; c < cols; c += kBlockThreads) yr[c] = from_f32<T>(expf(to_f32(xr[c]) - m) * inv);
}

template <typename T>
__device__ __forceinline__ void backward_long(const T* __restrict__ y,   // [rows, cols] row-major (forward output)
                                              const T* __restrict__ dy,  // [rows, cols] row-major
                                              T* __restrict__ dx,        // [rows, cols] row-major
                                              unsigned rows, unsigned cols) {
    __shared__ float part[kBlockThreads / 32];
    const unsigned row = blockIdx.x;
    if (row >= rows) return;  // Uniform across the block.
    const unsigned long long base = (unsigned long long)row * cols;

    float dot = 0.0f;
    for (unsigned c = threadIdx.x; c < cols; c += kBlockThreads) dot += to_f32(dy[base + c]) * to_f32(y[base + c]);
    dot = rf::warp_sum(dot);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = dot;
    __syncthreads();
    dot = 0.0f;
#pragma unroll
    for (unsigned w = 0; w < kBlockThreads / 32; ++w) dot += part[w];
    for (unsigned c = threadIdx.x; c < cols; c += kBlockThreads) {
        const float yc = to_f32(y[base + c]);
        dx[base + c] = from_f32<T>(yc * (to_f32(dy[base + c]) - dot));
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Entry points.

extern "C" __global__ void __launch_bounds__(256) softmax_forward_f32(const float* x, float* y, unsigned rows,
                                                                      unsigned cols) {
    forward<float>(x, y, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) softmax_forward_bf16(const bf16* x, bf16* y, unsigned rows,
                                                                       unsigned cols) {
    forward<bf16>(x, y, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) softmax_backward_f32(const float* y, const float* dy, float* dx,
                                                                       unsigned rows, unsigned cols) {
    backward<float>(y, dy, dx, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) softmax_backward_bf16(const bf16* y, const bf16* dy, bf16* dx,
                                                                        unsigned rows, unsigned cols) {
    backward<bf16>(y, dy, dx, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) softmax_forward_long_f32(const float* x, float* y, unsigned rows,
                                                                           unsigned cols) {
    forward_long<float>(x, y, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) softmax_forward_long_bf16(const bf16* x, bf16* y, unsigned rows,
                                                                            unsigned cols) {
    forward_long<bf16>(x, y, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) softmax_backward_long_f32(const float* y, const float* dy,
                                                                            float* dx, unsigned rows, unsigned cols) {
    backward_long<float>(y, dy, dx, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) softmax_backward_long_bf16(const bf16* y, const bf16* dy, bf16* dx,
                                                                             unsigned rows, unsigned cols) {
    backward_long<bf16>(y, dy, dx, rows, cols);
}
