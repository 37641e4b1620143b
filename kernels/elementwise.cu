/*
elementwise.cu: broadcast binary ops and unary ops on f32 and bf16 (bf16 storage, f32 math), strided inputs.
Math:      binary y_i = op(a_{off_a(i)}, b_{off_b(i)}), op ∈ {add, sub, mul, div, max, min};
           unary  y_i = op(x_{off_x(i)}), op ∈ {neg, abs, exp, log, sqrt, rsqrt, recip, sqr, relu, gelu (tanh form),
           gelu_erf, silu, sigmoid, tanh}; off_t(i) = Σ_d idx_d(i)·stride_t[d] over the output's row-major index.
Layout:    y [n] contiguous (n = Π dims); a, b, x strided views of the same dims (rank ≤ 6, element strides, stride 0
           broadcasts); info [3·rank] u32 (binary: dims, strides of a, strides of b) or [2·rank] (unary: dims, strides
           of x); rank = 0 means every input is contiguous with n elements (the fast path, info unused: 16-byte vector
           loads and stores when every pointer is 16-byte aligned, then a scalar tail).
Traffic:   binary 3·s B/elem, unary 2·s B/elem (s = 4 for f32, 2 for bf16; broadcast inputs read less) → memory-bound.
Launch:    grid-stride loop, 256 threads per block, grid = min(ceil(n/256), 65535); n < 2^31.
Reference: crates/kernels/src/elementwise/cpu.rs::{binary, unary}   Test: tests/it/elementwise.rs
*/
#include "common.cuh"

namespace {

using rf::from_f32;
using rf::to_f32;
using bf16 = __nv_bfloat16;

// ---------------------------------------------------------------------------------------------------------------
// Device helpers: the ops, each a struct with one static `apply` in f32.

struct Add { static __device__ __forceinline__ float apply(float a, float b) { return a + b; } };
struct Sub { static __device__ __forceinline__ float apply(float a, float b) { return a - b; } };
struct Mul { static __device__ __forceinline__ float apply(float a, float b) { return a * b; } };
struct Div { static __device__ __forceinline__ float apply(float a, float b) { return a / b; } };
// fmaxf / fminf return the other operand when one is NaN, as Rust's f32::max / f32::min do.
struct Max { static __device__ __forceinline__ float apply(float a, float b) { return fmaxf(a, b); } };
struct Min { static __device__ __forceinline__ float apply(float a, float b) { return fminf(a, b); } };

struct Neg { static __device__ __forceinline__ float apply(float x) { return -x; } };
struct Abs { static __device__ __forceinline__ float apply(float x) { return fabsf(x); } };
struct Exp { static __device__ __forceinline__ float apply(float x) { return expf(x); } };
struct Log { static __device__ __forceinline__ float apply(float x) { return logf(x); } };
struct Sqrt { static __device__ __forceinline__ float apply(float x) { return sqrtf(x); } };
struct Rsqrt { static __device__ __forceinline__ float apply(float x) { return 1.0f / sqrtf(x); } };
struct Recip { static __device__ __forceinline__ float apply(float x) { return 1.0f / x; } };
struct Sqr { static __device__ __forceinline__ float apply(float x) { return x * x; } };
// relu keeps NaN (x > 0 is false for NaN, so NaN would become 0 without the explicit check).
struct Relu { static __device__ __forceinline__ float apply(float x) { return x > 0.0f || x != x ? x : 0.0f; } };
// The tanh approximation 0.5·x·(1 + tanh(u)), u = √(2/π)·(x + 0.044715·x³), evaluated as x·sigmoid(2u): the
// same value without the cancellation of 1 + tanh(u) for negative x.
struct Gelu {
    static __device__ __forceinline__ float apply(float x) {
        const float two_k = 1.5957691216057308f;  // 2·√(2/π)
        return x / (1.0f + expf(-two_k * (x + 0.044715f * x * x * x)));
    }
};
// The exact form 0.5·x·(1 + erf(x/√2)) = 0.5·x·erfc(−x/√2), the latter free of cancellation for negative x.
struct GeluErf {
    static __device__ __forceinline__ float apply(float x) { return 0.5f * x * erfcf(-x * 0.7071067811865476f); }
};
struct Silu { static __device__ __forceinline__ float apply(float x) { return x / (1.0f + expf(-x)); } };
struct Sigmoid { static __device__ __forceinline__ float apply(float x) { return 1.0f / (1.0f + expf(-x)); } };
struct Tanh { static __device__ __forceinline__ float apply(float x) { return tanhf(x); } };

// The element offset of output index `i` in a strided view: dims [rank], strides [rank] (row-major order).
__device__ __forceinline__ unsigned long long strided_offset(unsigned i, const unsigned* dims, const unsigned* strides,
                                                             unsigned rank) {
    unsigned long long off = 0;
    for (int d = int(rank) - 1; d >= 0; --d) {
        const unsigned q = i / dims[d];
        off += (unsigned long long)(i - q * dims[d]) * strides[d];
        i = q;
    }
    return off;
}

// Whether a pointer allows 16-byte vector accesses.
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<unsigned long long>(p) & 15) == 0; }

// 16 bytes of T (4 f32 or 8 bf16) moved as one uint4 and read or written element by element in f32.
template <typename T> struct Pack {
    static constexpr int kLen = 16 / sizeof(T);
    uint4 raw;
    static __device__ __forceinline__ Pack load(const T* p) { return Pack{*reinterpret_cast<const uint4*>(p)}; }
    __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<uint4*>(p) = raw; }
    __device__ __forceinline__ float get(int j) const { return to_f32(reinterpret_cast<const T*>(&raw)[j]); }
    __device__ __forceinline__ void set(int j, float v) { reinterpret_cast<T*>(&raw)[j] = from_f32<T>(v); }
};

// ---------------------------------------------------------------------------------------------------------------
// Kernels.

template <typename T, typename Op>
__device__ __forceinline__ void binary(const T* __restrict__ a,       // strided view of dims (info)
                                       const T* __restrict__ b,       // strided view of dims (info)
                                       T* __restrict__ y,             // [n] contiguous
                                       const unsigned* __restrict__ info,  // [3·rank] dims, strides a, strides b
                                       unsigned rank, unsigned n) {
    if (rank == 0) {
        // 16-byte vectors while every pointer allows them, then the scalar tail (or everything, if one does not).
        unsigned done = 0;
        if (aligned16(a) && aligned16(b) && aligned16(y)) {
            const unsigned nv = n / Pack<T>::kLen;
            for (unsigned i = rf::grid_first(); i < nv; i += rf::grid_stride()) {
                const Pack<T> pa = Pack<T>::load(a + i * Pack<T>::kLen), pb = Pack<T>::load(b + i * Pack<T>::kLen);
                Pack<T> py;
#pragma unroll
                for (int j = 0; j < Pack<T>::kLen; ++j) py.set(j, Op::apply(pa.get(j), pb.get(j)));
                py.store(y + i * Pack<T>::kLen);
            }
            done = nv * Pack<T>::kLen;
        }
        for (unsigned i = done + rf::grid_first(); i < n; i += rf::grid_stride())
            y[i] = from_f32<T>(Op::apply(to_f32(a[i]), to_f32(b[i])));
        return;
    }
    const unsigned* dims = info;
    const unsigned* sa = info + rank;
    const unsigned* sb = info + 2 * rank;
    for (unsigned i = rf::grid_first(); i < n; i += rf::grid_stride()) {
        // One pass over the dims computes both offsets.
        unsigned rem = i;
        unsigned long long oa = 0, ob = 0;
        for (int d = int(rank) - 1; d >= 0; --d) {
            const unsigned q = rem / dims[d];
            const unsigned idx = rem - q * dims[d];
            oa += (unsigned long long)idx * sa[d];
            ob += (unsigned long long)idx * sb[d];
            rem = q;
        }
        y[i] = from_f32<T>(Op::apply(to_f32(a[oa]), to_f32(b[ob])));
    }
}

template <typename T, typename Op>
__device__ __forceinline__ void unary(const T* __restrict__ x,            // strided view of dims (info)
                                      T* __restrict__ y,                  // [n] contiguous
                                      const unsigned* __restrict__ info,  // [2·rank] dims, strides of x
                                      unsigned rank, unsigned n) {
    if (rank == 0) {
        unsigned done = 0;
        if (aligned16(x) && aligned16(y)) {
            const unsigned nv = n / Pack<T>::kLen;
            for (unsigned i = rf::grid_first(); i < nv; i += rf::grid_stride()) {
                const Pack<T> px = Pack<T>::load(x + i * Pack<T>::kLen);
                Pack<T> py;
#pragma unroll
                for (int j = 0; j < Pack<T>::kLen; ++j) py.set(j, Op::apply(px.get(j)));
                py.store(y + i * Pack<T>::kLen);
            }
            done = nv * Pack<T>::kLen;
        }
        for (unsigned i = done + rf::grid_first(); i < n; i += rf::grid_stride())
            y[i] = from_f32<T>(Op::apply(to_f32(x[i])));
        return;
    }
    for (unsigned i = rf::grid_first(); i < n; i += rf::grid_stride())
        y[i] = from_f32<T>(Op::apply(to_f32(x[strided_offset(i, info, info + rank, rank)])));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Entry points: binary (a, b, y, info, rank, n) and unary (x, y, info, rank, n); see the header for shapes.

#define BIN_ARGS(T) const T *a, const T *b, T *y, const unsigned *info, unsigned rank, unsigned n
#define UN_ARGS(T) const T *x, T *y, const unsigned *info, unsigned rank, unsigned n

extern "C" __global__ void elementwise_add_f32(BIN_ARGS(float)) { binary<float, Add>(a, b, y, info, rank, n); }
extern "C" __global__ void elementwise_sub_f32(BIN_ARGS(float)) { binary<float, Sub>(a, b, y, info, rank, n); }
extern "C" __global__ void elementwise_mul_f32(BIN_ARGS(float)) { binary<float, Mul>(a, b, y, info, rank, n); }
extern "C" __global__ void elementwise_div_f32(BIN_ARGS(float)) { binary<float, Div>(a, b, y, info, rank, n); }
extern "C" __global__ void elementwise_max_f32(BIN_ARGS(float)) { binary<float, Max>(a, b, y, info, rank, n); }
extern "C" __global__ void elementwise_min_f32(BIN_ARGS(float)) { binary<float, Min>(a, b, y, info, rank, n); }
extern "C" __global__ void elementwise_add_bf16(BIN_ARGS(bf16)) { binary<bf16, Add>(a, b, y, info, rank, n); }
extern "C" __global__ void elementwise_sub_bf16(BIN_ARGS(bf16)) { binary<bf16, Sub>(a, b, y, info, rank, n); }
extern "C" __global__ void elementwise_mul_bf16(BIN_ARGS(bf16)) { binary<bf16, Mul>(a, b, y, info, rank, n); }
extern "C" __global__ void elementwise_div_bf16(BIN_ARGS(bf16)) { binary<bf16, Div>(a, b, y, info, rank, n); }
extern "C" __global__ void elementwise_max_bf16(BIN_ARGS(bf16)) { binary<bf16, Max>(a, b, y, info, rank, n); }
extern "C" __global__ void elementwise_min_bf16(BIN_ARGS(bf16)) { binary<bf16, Min>(a, b, y, info, rank, n); }

extern "C" __global__ void elementwise_neg_f32(UN_ARGS(float)) { unary<float, Neg>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_abs_f32(UN_ARGS(float)) { unary<float, Abs>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_exp_f32(UN_ARGS(float)) { unary<float, Exp>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_log_f32(UN_ARGS(float)) { unary<float, Log>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_sqrt_f32(UN_ARGS(float)) { unary<float, Sqrt>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_rsqrt_f32(UN_ARGS(float)) { unary<float, Rsqrt>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_recip_f32(UN_ARGS(float)) { unary<float, Recip>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_sqr_f32(UN_ARGS(float)) { unary<float, Sqr>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_relu_f32(UN_ARGS(float)) { unary<float, Relu>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_gelu_f32(UN_ARGS(float)) { unary<float, Gelu>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_gelu_erf_f32(UN_ARGS(float)) { unary<float, GeluErf>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_silu_f32(UN_ARGS(float)) { unary<float, Silu>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_sigmoid_f32(UN_ARGS(float)) { unary<float, Sigmoid>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_tanh_f32(UN_ARGS(float)) { unary<float, Tanh>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_neg_bf16(UN_ARGS(bf16)) { unary<bf16, Neg>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_abs_bf16(UN_ARGS(bf16)) { unary<bf16, Abs>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_exp_bf16(UN_ARGS(bf16)) { unary<bf16, Exp>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_log_bf16(UN_ARGS(bf16)) { unary<bf16, Log>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_sqrt_bf16(UN_ARGS(bf16)) { unary<bf16, Sqrt>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_rsqrt_bf16(UN_ARGS(bf16)) { unary<bf16, Rsqrt>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_recip_bf16(UN_ARGS(bf16)) { unary<bf16, Recip>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_sqr_bf16(UN_ARGS(bf16)) { unary<bf16, Sqr>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_relu_bf16(UN_ARGS(bf16)) { unary<bf16, Relu>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_gelu_bf16(UN_ARGS(bf16)) { unary<bf16, Gelu>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_gelu_erf_bf16(UN_ARGS(bf16)) { unary<bf16, GeluErf>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_silu_bf16(UN_ARGS(bf16)) { unary<bf16, Silu>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_sigmoid_bf16(UN_ARGS(bf16)) { unary<bf16, Sigmoid>(x, y, info, rank, n); }
extern "C" __global__ void elementwise_tanh_bf16(UN_ARGS(bf16)) { unary<bf16, Tanh>(x, y, info, rank, n); }
