/*
nf4.cu: bitsandbytes-exact NF4 quantize / dequantize, double quantization of the block scales and its inverse, and
an NF4 GEMV for decode shapes.
Math:      quantize: a_b = max|x_i| over block b (NaN if any x_i is NaN); q_i = #{t : s_i > T_t} with s_i = x_i·(1/a_b)
           (reciprocal, then multiply; the short last block divides, s_i = x_i / max(a_b, 1e-38), and stores the
           floored scale). dequantize: ŵ_i = NF4[q_i]·a_b in f32, rounded to the output type. double quantize:
           d_j = a_j − μ, g = max|d_j| over 256 scales, c_j = #{mid < bin(d_j·(1/g))} (bitsandbytes' 65 536-bin table
           evaluated exactly); inverse a_j = map[c_j]·g + μ (two roundings). GEMV: y[m, n] = Σ_k x[m, k]·ŵ[n, k] in
           f32, computed per 32-code chunk as a_b·Σ_j NF4[q_j]·x[m, k_j] (the scale applied once per chunk).
Layout:    x [n] f32/f16/bf16; packed [ceil(n/2)] u8, element 2i in the high nibble of byte i; absmax [ceil(n/bs)] f32;
           codes [nb] u8, nested [ceil(nb/256)] f32; GEMV x [M, K] bf16, W [N, K] NF4 flattened row-major (blocks
           and bytes may straddle rows when K is not a multiple of bs or of 2), y [M, N] bf16, all contiguous.
Traffic:   quantize reads s·n B twice (the second pass from L1) and writes n/2 + 4n/bs → ~2.6 B/elem for bf16 at bs 64,
           15 compares per element; dequantize reads n/2 + 4n/bs, writes s·n (16-byte stores); GEMV reads the weight
           once, N·K/2 + 4·N·K/bs B (for 4096×4096 at bs 64: 8.4 + 1.0 MB ≈ 2.2 µs at 4.3 TB/s), x (2·M·K B) from
           L1/L2, writes 2·M·N. Issue: ptxsim counts ~10 PTX thread-instructions per weight at M = 1 (5.3 M warp
           instructions for 4096×4096); ptxas folds the 64-bit shared-address arithmetic, leaving ~5 per weight in
           SASS (est.), ≈ 2.5 µs on 132 SMs: balanced with the weight stream. Each further row of x adds ~2 per
           weight (bf16 unpack + fma), so M ≥ 4 is issue-bound (M = 16: ~17 µs est.); there a tensor-core tile
           (dequantize to shared memory, mma) would win.
Launch:    quantize: one warp per block, 8 warps (256 threads) per CTA, grid = ceil(nblocks/8); dequantize: 256
           threads, 8 elements (one u32 of codes) per thread, grid-stride; double (de)quantize: one 256-thread CTA per
           256 scales; GEMV: one warp per weight row, 8 rows per CTA, lane l loads 16-byte chunks (32 codes) l, l+32, …
           of the row with one ld.global.nc.v4 each (a warp request is 512 contiguous bytes), codebook in shared
           memory, warp-shuffle sum; variants for M ≤ 1, 4, 16 keep the M accumulators in registers.
Reference: crates/kernels/src/nf4/cpu.rs::{quantize, dequantize, gemv} and nf4/dq.rs::{double_quantize_with_offset,
           double_dequantize}   Test: tests/it/nf4_gpu.rs
*/
#include <cuda_fp16.h>

#include "common.cuh"
#include "nf4_codebook.cuh"

namespace {

using bf16 = __nv_bfloat16;
using f16 = __half;
using ull = unsigned long long;
using rf::nf4::kCodebook;
using rf::nf4::kDynamicMap;
using rf::nf4::kDynamicMid;
using rf::nf4::kNestedBlocksize;
using rf::nf4::kScaleFloor;
using rf::nf4::code_of;
using rf::nf4::kZeroCode;

constexpr unsigned kWarps = 8;  // Warps per CTA of the quantize and GEMV kernels.
constexpr unsigned kThreads = 256;
// The last bin of bitsandbytes' CPU quantization table (crates/kernels/src/nf4/dq.rs: LUT_SIZE − 1).
constexpr float kLutLast = 65535.0f;

// ---------------------------------------------------------------------------------------------------------------
// Device helpers.

// Widens a storage element to f32 (exact).
__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ float load(f16 v) { return __half2float(v); }
__device__ __forceinline__ float load(bf16 v) { return __bfloat162float(v); }

// Rounds an f32 to the storage type, to nearest even.
template <typename T> __device__ __forceinline__ T store(float v);
template <> __device__ __forceinline__ float store<float>(float v) { return v; }
template <> __device__ __forceinline__ f16 store<f16>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ bf16 store<bf16>(float v) { return __float2bfloat16_rn(v); }

// The bits of a 2-byte storage element.
__device__ __forceinline__ unsigned bits16(f16 v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned bits16(bf16 v) { return __bfloat16_as_ushort(v); }

// torch's max over absolute values: a NaN, once seen, stays (the twin stops at the first NaN it meets).
__device__ __forceinline__ float nan_max(float m, float a) { return (m != m) ? m : ((a > m || a != a) ? a : m); }

__device__ __forceinline__ float warp_nan_max(float m) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) m = nan_max(m, __shfl_xor_sync(0xffffffffu, m, offset));
    return m;
}

// log2 of a power of two (the launchers check that blocksize is one): block indices become shifts, not 64-bit
// divisions.
__device__ __forceinline__ unsigned log2_pow2(unsigned v) { return __ffs(v) - 1; }

// Copies `count` f32 values from constant memory into shared memory (the caller synchronizes).
__device__ __forceinline__ void fill_shared(float* dst, const float* src, unsigned count) {
    for (unsigned i = threadIdx.x; i < count; i += blockDim.x) dst[i] = src[i];
}

// Writes 8 consecutive results at `dst` (8-element aligned) with 16-byte stores.
__device__ __forceinline__ void store8(float* dst, const float (&v)[8]) {
    reinterpret_cast<float4*>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <typename T> __device__ __forceinline__ void store8(T* dst, const float (&v)[8]) {
    unsigned w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = bits16(store<T>(v[2 * i])) | (bits16(store<T>(v[2 * i + 1])) << 16);
    *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels.

template <typename T>
__device__ __forceinline__ void quantize(const T* __restrict__ x,              // [n]
                                         unsigned char* __restrict__ packed,   // [ceil(n/2)]
                                         float* __restrict__ absmax,           // [ceil(n/blocksize)]
                                         ull n, unsigned blocksize) {
    const ull block = (ull)blockIdx.x * kWarps + threadIdx.x / 32;
    const ull first = block * blocksize;
    if (first >= n) return;  // Uniform across the warp: the shuffles below see all 32 lanes.
    const unsigned lane = threadIdx.x % 32;
    const unsigned len = n - first < blocksize ? (unsigned)(n - first) : blocksize;
    const T* xb = x + first;

    float m = 0.0f;
    for (unsigned i = lane; i < len; i += 32) m = nan_max(m, fabsf(load(xb[i])));
    m = warp_nan_max(m);
    // fmaxf drops a NaN absmax, as Rust's f32::max in the twin does.
    const bool full = len == blocksize;
    const float floored = fmaxf(m, kScaleFloor);
    const float inv = __frcp_rn(floored);

    // Lane l codes the pairs l, l + 32, …: one byte each; blocksize is even, so a pair never straddles blocks.
    unsigned char* pb = packed + first / 2;
    for (unsigned p = lane; 2 * p < len; p += 32) {
        const float v0 = load(xb[2 * p]);
        const unsigned hi = code_of(full ? __fmul_rn(v0, inv) : __fdiv_rn(v0, floored));
        unsigned lo = kZeroCode;  // The padding nibble of an odd length.
        if (2 * p + 1 < len) {
            const float v1 = load(xb[2 * p + 1]);
            lo = code_of(full ? __fmul_rn(v1, inv) : __fdiv_rn(v1, floored));
        }
        pb[p] = (unsigned char)(hi << 4 | lo);
    }
    if (lane == 0) absmax[block] = full ? m : floored;
}

template <typename T>
__device__ __forceinline__ void dequantize(const unsigned char* __restrict__ packed,  // [ceil(n/2)]
                                           const float* __restrict__ absmax,          // [ceil(n/blocksize)]
                                           T* __restrict__ out,                       // [n]
                                           ull n, unsigned blocksize) {
    __shared__ float cb[16];
    fill_shared(cb, kCodebook, 16);
    __syncthreads();
    const ull stride = (ull)gridDim.x * blockDim.x;
    const unsigned shift = log2_pow2(blocksize);
    // Thread t owns elements 8t … 8t+7 (bytes 4t … 4t+3): inside one block, since blocksize ≥ 32.
    for (ull t = (ull)blockIdx.x * blockDim.x + threadIdx.x; 8 * t < n; t += stride) {
        const float a = absmax[(8 * t) >> shift];
        if (8 * t + 8 <= n) {
            const unsigned w = *reinterpret_cast<const unsigned*>(packed + 4 * t);
            float v[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                // Byte j/2 sits at bits 8·(j/2) of the little-endian word; even j is its high nibble.
                const unsigned q = (w >> (8 * (j / 2) + (j % 2 == 0 ? 4 : 0))) & 15u;
                v[j] = __fmul_rn(cb[q], a);
            }
            store8(out + 8 * t, v);
        } else {
            for (ull i = 8 * t; i < n; ++i) {
                const unsigned byte = packed[i / 2];
                const unsigned q = i % 2 == 0 ? byte >> 4 : byte & 15u;
                out[i] = store<T>(__fmul_rn(cb[q], a));
            }
        }
    }
}

// One CTA per group of 256 scales: d = a − μ, g = max|d| (NaN lanes ignored), then each scale's table bin.
__device__ __forceinline__ void double_quantize(const float* __restrict__ absmax,  // [nblocks]
                                                unsigned char* __restrict__ codes, // [nblocks]
                                                float* __restrict__ nested,        // [ceil(nblocks/256)]
                                                float offset, unsigned nblocks) {
    __shared__ float mids[255];
    __shared__ float part[kThreads / 32];
    fill_shared(mids, kDynamicMid, 255);
    const unsigned i = blockIdx.x * kNestedBlocksize + threadIdx.x;
    const bool live = i < nblocks;
    const float d = live ? __fsub_rn(absmax[i], offset) : 0.0f;
    const float g = rf::warp_max(fmaxf(0.0f, fabsf(d)));  // fmaxf(0, NaN) = 0, as the twin's fold.
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = g;
    __syncthreads();
    float am = 0.0f;
#pragma unroll
    for (unsigned w = 0; w < kThreads / 32; ++w) am = fmaxf(am, part[w]);
    if (threadIdx.x == 0) nested[blockIdx.x] = am;
    if (!live) return;
    unsigned q = 0;  // An all-zero group keeps code 0.
    if (am != 0.0f) {
        // The table bin: clamp to [-1, 1] (NaN → -1, which lands in bin 0 as the twin's NaN cast does), then
        // trunc(((v + 1)·0.5)·65535 + 0.5), each step rounded to f32.
        const float v = fminf(fmaxf(__fmul_rn(d, __frcp_rn(am)), -1.0f), 1.0f);
        const float t = __fadd_rn(__fmul_rn(__fmul_rn(__fadd_rn(v, 1.0f), 0.5f), kLutLast), 0.5f);
        const unsigned bin = __float2uint_rz(t);
        // The bin's value −1 + 2·bin/65535, and its code: the number of midpoints below it (branch-free search
        // over the 255 sorted midpoints; every probe stays below index 255).
        const float val = __fadd_rn(-1.0f, __fdiv_rn(2.0f * (float)bin, kLutLast));
#pragma unroll
        for (unsigned step = 128; step > 0; step >>= 1) q += mids[q + step - 1] < val ? step : 0u;
    }
    codes[i] = (unsigned char)q;
}

__device__ __forceinline__ void double_dequantize(const unsigned char* __restrict__ codes,  // [nblocks]
                                                  const float* __restrict__ nested,         // [ceil(nblocks/256)]
                                                  float offset,
                                                  float* __restrict__ absmax,               // [nblocks]
                                                  unsigned nblocks) {
    __shared__ float map[256];
    fill_shared(map, kDynamicMap, 256);
    __syncthreads();
    const unsigned i = blockIdx.x * kNestedBlocksize + threadIdx.x;
    if (i < nblocks) absmax[i] = __fadd_rn(__fmul_rn(map[codes[i]], nested[blockIdx.x]), offset);
}

// The block scales of the GEMV weight: plain f32, or double-quantized and expanded on the fly exactly as
// `double_dequantize` does.
struct PlainScales {
    static constexpr bool kNeedsMap = false;
    const float* absmax;  // [ceil(N·K/bs)]
    __device__ __forceinline__ float operator()(ull b, const float*) const { return __ldg(absmax + b); }
};
struct NestedScales {
    static constexpr bool kNeedsMap = true;
    const unsigned char* codes;  // [ceil(N·K/bs)]
    const float* nested;         // [ceil(ceil(N·K/bs)/256)]
    float offset;
    __device__ __forceinline__ float operator()(ull b, const float* map) const {
        return __fadd_rn(__fmul_rn(map[__ldg(codes + b)], __ldg(nested + b / kNestedBlocksize)), offset);
    }
};

// A 16-byte chunk of 32 codes as four little-endian words: code j is byte j/2 (word j/8), its high nibble for even j.
struct Chunk {
    unsigned w0, w1, w2, w3;
};

// The code of element j, times 4: the byte offset of its codebook entry in shared memory. With j known at compile
// time this is a shift and a mask; at run time the word is picked by selects (no local-memory array).
__device__ __forceinline__ unsigned code_offset(const Chunk& c, int j) {
    const unsigned w = j < 8 ? c.w0 : j < 16 ? c.w1 : j < 24 ? c.w2 : c.w3;
    const int shift = 8 * ((j / 2) % 4) + (j % 2 == 0 ? 4 : 0);
    return (shift >= 2 ? w >> (shift - 2) : w << 2) & 0x3cu;
}

// The codebook value at a byte offset from `code_offset`.
__device__ __forceinline__ float code_value(const float* cb, unsigned offset) {
    return *reinterpret_cast<const float*>(reinterpret_cast<const char*>(cb) + offset);
}

// Adds the products of a chunk that lies inside the row (elements e0 … e0+31, columns k0 … k0+31) to the M
// accumulators: the 32 code values in registers, then per row of x (16-byte loads when aligned) Σ_j code_j·x_j,
// scaled once by the block's absmax. (The GEMV is held to a tolerance, not to the twin's bits: scaling the chunk
// sum instead of each weight saves a multiply per weight.)
template <int kRows>
__device__ __forceinline__ void chunk_dot(float (&acc)[kRows], const Chunk& w, float a, const float* cb,
                                          const bf16* __restrict__ x, unsigned m_rows, unsigned k_cols, unsigned k0) {
    float cv[32];
#pragma unroll
    for (int j = 0; j < 32; ++j) cv[j] = code_value(cb, code_offset(w, j));
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
        if (m >= (int)m_rows) break;  // Uniform: every lane has the same M.
        const bf16* xr = x + (ull)m * k_cols + k0;
        float s = 0.0f;
        if ((reinterpret_cast<ull>(xr) & 15) == 0) {
#pragma unroll
            for (int v = 0; v < 4; ++v) {
                const uint4 p = __ldg(reinterpret_cast<const uint4*>(xr) + v);
                const unsigned u[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    // A bf16 is the high half of an f32: unpacking is one shift or mask.
                    s = fmaf(cv[8 * v + 2 * i], __uint_as_float(u[i] << 16), s);
                    s = fmaf(cv[8 * v + 2 * i + 1], __uint_as_float(u[i] & 0xffff0000u), s);
                }
            }
        } else {
#pragma unroll
            for (int j = 0; j < 32; ++j) s = fmaf(cv[j], __bfloat162float(xr[j]), s);
        }
        acc[m] = fmaf(a, s, acc[m]);
    }
}

// The same for a chunk that straddles a row end: only elements in [lo, hi) count.
template <int kRows>
__device__ __forceinline__ void chunk_dot_edge(float (&acc)[kRows], const Chunk& w, float a, const float* cb,
                                               const bf16* __restrict__ x, unsigned m_rows, unsigned k_cols, ull e0,
                                               ull lo, ull hi) {
    for (int j = 0; j < 32; ++j) {
        const ull e = e0 + j;
        if (e < lo || e >= hi) continue;
        const float wv = __fmul_rn(code_value(cb, code_offset(w, j)), a);
        const unsigned k = (unsigned)(e - lo);
#pragma unroll
        for (int m = 0; m < kRows; ++m)
            if (m < (int)m_rows) acc[m] = fmaf(wv, __bfloat162float(x[(ull)m * k_cols + k]), acc[m]);
    }
}

template <int kRows, typename Scales>
__device__ __forceinline__ void gemv(const bf16* __restrict__ x,               // [M, K] row-major
                                     const unsigned char* __restrict__ packed, // [ceil(N·K/2)]
                                     Scales scales, bf16* __restrict__ y,      // [M, N] row-major
                                     unsigned m_rows, unsigned n_rows, unsigned k_cols, unsigned blocksize) {
    __shared__ float cb[16];
    __shared__ float map[256];
    fill_shared(cb, kCodebook, 16);
    if (Scales::kNeedsMap) fill_shared(map, kDynamicMap, 256);
    __syncthreads();
    const unsigned row = blockIdx.x * kWarps + threadIdx.x / 32;
    if (row >= n_rows) return;  // Uniform across the warp: the shuffles below see all 32 lanes.
    const unsigned lane = threadIdx.x % 32;
    const ull lo = (ull)row * k_cols, hi = lo + k_cols;
    const ull bytes = ((ull)n_rows * k_cols + 1) / 2;
    const unsigned shift = log2_pow2(blocksize);

    float acc[kRows];
#pragma unroll
    for (int m = 0; m < kRows; ++m) acc[m] = 0.0f;
    // Chunk c covers elements 32c … 32c+31, bytes 16c … 16c+15; blocksize ≥ 32, so it lies in one block.
    for (ull c = lo / 32 + lane; 32 * c < hi; c += 32) {
        Chunk w;
        if (16 * c + 16 <= bytes) {
            const uint4 v = __ldg(reinterpret_cast<const uint4*>(packed + 16 * c));
            w = Chunk{v.x, v.y, v.z, v.w};
        } else {
            // The buffer's last chunk is partial: assemble it from the bytes that exist.
            w = Chunk{0, 0, 0, 0};
            for (unsigned b = 0; 16 * c + b < bytes; ++b) {
                const unsigned v = (unsigned)packed[16 * c + b] << (8 * (b % 4));
                if (b < 4) w.w0 |= v;
                else if (b < 8) w.w1 |= v;
                else if (b < 12) w.w2 |= v;
                else w.w3 |= v;
            }
        }
        const float a = scales((32 * c) >> shift, map);
        if (32 * c >= lo && 32 * c + 32 <= hi) {
            chunk_dot<kRows>(acc, w, a, cb, x, m_rows, k_cols, (unsigned)(32 * c - lo));
        } else {
            chunk_dot_edge<kRows>(acc, w, a, cb, x, m_rows, k_cols, 32 * c, lo, hi);
        }
    }
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
        const float s = rf::warp_sum(acc[m]);
        if (lane == 0 && m < (int)m_rows) y[(ull)m * n_rows + row] = __float2bfloat16_rn(s);
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Entry points.

extern "C" __global__ void __launch_bounds__(256) nf4_quantize_f32(const float* x, unsigned char* packed,
                                                                   float* absmax, ull n, unsigned blocksize) {
    quantize<float>(x, packed, absmax, n, blocksize);
}
extern "C" __global__ void __launch_bounds__(256) nf4_quantize_f16(const f16* x, unsigned char* packed, float* absmax,
                                                                   ull n, unsigned blocksize) {
    quantize<f16>(x, packed, absmax, n, blocksize);
}
extern "C" __global__ void __launch_bounds__(256) nf4_quantize_bf16(const bf16* x, unsigned char* packed,
                                                                    float* absmax, ull n, unsigned blocksize) {
    quantize<bf16>(x, packed, absmax, n, blocksize);
}
extern "C" __global__ void __launch_bounds__(256) nf4_dequantize_f32(const unsigned char* packed, const float* absmax,
                                                                     float* out, ull n, unsigned blocksize) {
    dequantize<float>(packed, absmax, out, n, blocksize);
}
extern "C" __global__ void __launch_bounds__(256) nf4_dequantize_f16(const unsigned char* packed, const float* absmax,
                                                                     f16* out, ull n, unsigned blocksize) {
    dequantize<f16>(packed, absmax, out, n, blocksize);
}
extern "C" __global__ void __launch_bounds__(256) nf4_dequantize_bf16(const unsigned char* packed, const float* absmax,
                                                                      bf16* out, ull n, unsigned blocksize) {
    dequantize<bf16>(packed, absmax, out, n, blocksize);
}
extern "C" __global__ void __launch_bounds__(256) nf4_double_quantize_f32(const float* absmax, unsigned char* codes,
                                                                          float* nested, float offset,
                                                                          unsigned nblocks) {
    double_quantize(absmax, codes, nested, offset, nblocks);
}
extern "C" __global__ void __launch_bounds__(256) nf4_double_dequantize_f32(const unsigned char* codes,
                                                                            const float* nested, float offset,
                                                                            float* absmax, unsigned nblocks) {
    double_dequantize(codes, nested, offset, absmax, nblocks);
}

// GEMV entries: `_m<R>` handles M ≤ R rows of x; `_dq` reads double-quantized block scales.
extern "C" __global__ void __launch_bounds__(256) nf4_gemv_m1_bf16(const bf16* x, const unsigned char* packed,
                                                                   const float* absmax, bf16* y, unsigned m,
                                                                   unsigned n, unsigned k, unsigned blocksize) {
    gemv<1>(x, packed, PlainScales{absmax}, y, m, n, k, blocksize);
}
extern "C" __global__ void __launch_bounds__(256) nf4_gemv_m4_bf16(const bf16* x, const unsigned char* packed,
                                                                   const float* absmax, bf16* y, unsigned m,
                                                                   unsigned n, unsigned k, unsigned blocksize) {
    gemv<4>(x, packed, PlainScales{absmax}, y, m, n, k, blocksize);
}
extern "C" __global__ void __launch_bounds__(256) nf4_gemv_m16_bf16(const bf16* x, const unsigned char* packed,
                                                                    const float* absmax, bf16* y, unsigned m,
                                                                    unsigned n, unsigned k, unsigned blocksize) {
    gemv<16>(x, packed, PlainScales{absmax}, y, m, n, k, blocksize);
}
extern "C" __global__ void __launch_bounds__(256) nf4_gemv_dq_m1_bf16(const bf16* x, const unsigned char* packed,
                                                                      const unsigned char* codes, const float* nested,
                                                                      float offset, bf16* y, unsigned m, unsigned n,
                                                                      unsigned k, unsigned blocksize) {
    gemv<1>(x, packed, NestedScales{codes, nested, offset}, y, m, n, k, blocksize);
}
extern "C" __global__ void __launch_bounds__(256) nf4_gemv_dq_m4_bf16(const bf16* x, const unsigned char* packed,
                                                                      const unsigned char* codes, const float* nested,
                                                                      float offset, bf16* y, unsigned m, unsigned n,
                                                                      unsigned k, unsigned blocksize) {
    gemv<4>(x, packed, NestedScales{codes, nested, offset}, y, m, n, k, blocksize);
}
extern "C" __global__ void __launch_bounds__(256) nf4_gemv_dq_m16_bf16(const bf16* x, const unsigned char* packed,
                                                                       const unsigned char* codes, const float* nested,
                                                                       float offset, bf16* y, unsigned m, unsigned n,
                                                                       unsigned k, unsigned blocksize) {
    gemv<16>(x, packed, NestedScales{codes, nested, offset}, y, m, n, k, blocksize);
}
