/*
common.cuh: device helpers shared by the kernel families (dtype conversion, warp reductions, grid-stride loops).
Math:      bf16 values are stored as bf16 and computed in f32 (round-to-nearest-even on store).
Traffic:   none (helpers only).
Reference: crates/kernels/src/elementwise/cpu.rs (conversions)   Test: tests/it/elementwise.rs
*/
#pragma once
#include <cuda_bf16.h>

namespace rf {

// Returns −∞ (NVRTC offers no <cmath> INFINITY, so it is built from its bit pattern).
__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000u); }

// Loads one storage element and widens it to f32.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

// Narrows an f32 to the storage type T (round to nearest even for bf16).
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Sum over the 32 lanes of a full warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Maximum over the 32 lanes of a full warp; every lane gets the result.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// The first index and the stride of a one-dimensional grid-stride loop.
__device__ __forceinline__ unsigned grid_first() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ unsigned grid_stride() { return gridDim.x * blockDim.x; }

}  // namespace rf
