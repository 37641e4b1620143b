/*
gemm.cu: tiled bf16 GEMM with f32 accumulation on tensor cores (mma.sync m16n8k16, ldmatrix, 3-stage cp.async).
Math:      C = alpha·A·op(B) + beta·C (C is read only when beta ≠ 0); products and sums in f32, one rounding on store.
Layout:    A [m, k] row-major (row stride lda); "nt": B [n, k] row-major (ldb), op(B) = Bᵀ, the nn.Linear weight layout
           y = x·Wᵀ; "nn": B [k, n] row-major (ldb); C [m, n] row-major (ldc), bf16 or f32. Strides in elements.
Traffic:   minimum 2·(m·k + n·k) + s_c·m·n B (s_c = 2 or 4; twice that with beta ≠ 0); FLOPs 2·m·n·k. At
           m = n = k = 4096: 1.4e11 FLOPs over ≥ 100 MB of DRAM traffic (1,400 FLOP/B) → compute-bound, ≥ 0.17 ms at
           the H200's 790 TFLOP/s bf16 roofline (mma.sync, without wgmma, reaches perhaps 60–70% of it). Each CTA
           tile loads (128 + 128)·32·2 = 16 KiB from L2 per k-step for 2·128·128·32 FLOPs → 64 FLOP/B, so 600 TFLOP/s
           also needs ~9 TB/s of L2 bandwidth: larger CTA tiles (or wgmma on sm_90) are the next step. Bytes the
           kernel requests: 2·k·(m·⌈n/128⌉ + n·⌈m/128⌉) read (A once per CTA column, B once per CTA row), s_c·m·n
           written (ptxsim counts exactly this; tests/it/gemm.rs checks it).
Launch:    CTA tile 128×128×32, 256 threads = 8 warps as 2 (m) × 4 (n), warp tile 64×32 = 4×4 m16n8 fragments;
           grid = (ceil(n/128), ceil(m/128)); 48 KiB static shared memory (three stages of A and B tiles: two k tiles
           in flight while one is computed, one barrier per k tile; XOR-swizzled 16-byte chunks so that ldmatrix and
           cp.async hit distinct banks). Tiles past m, n, k are zero-filled by
           cp.async's src-size; when a base pointer is not 16-byte aligned or lda / ldb is not a multiple of 8, a
           scalar path fills the same shared tiles with bounds-checked loads.
Reference: crates/kernels/src/gemm/cpu.rs::gemm   Test: tests/it/gemm.rs
*/
#include "common.cuh"

namespace {

using bf16 = __nv_bfloat16;

constexpr int BM = 128, BN = 128, BK = 32;  // CTA tile.
constexpr int kThreads = 256;               // 8 warps.
constexpr int WM = 64, WN = 32;             // Warp tile; warps are laid out 2 (m) × 4 (n).
constexpr int MT = WM / 16, NT = WN / 8;    // m16 and n8 fragments per warp.
constexpr int kTileElems = BM * BK;         // One A tile, and one B tile (BN·BK = BK·BN), in bf16 elements.
constexpr int kStages = 3;                  // Shared-memory stages of the cp.async pipeline (16 KiB each).

enum class Layout { NT, NN };

// ---------------------------------------------------------------------------------------------------------------
// Device helpers: shared-memory layout and the inline PTX.

// A k-major tile [rows][BK] (A, and B in "nt") holds 4 chunks of 8 bf16 per 64-byte row. Chunk c of row r sits at
// c ^ ((r >> 1) & 3): eight consecutive rows read by one ldmatrix 8×8 matrix then cover all 32 banks.
__device__ __forceinline__ int kmajor_off(int row, int chunk) { return row * BK + ((chunk ^ ((row >> 1) & 3)) << 3); }

// An n-major tile [BK][BN] (B in "nn") holds 16 chunks per 256-byte row; chunk c of row r sits at c ^ (r & 7).
__device__ __forceinline__ int nmajor_off(int row, int chunk) { return row * BN + ((chunk ^ (row & 7)) << 3); }

// The shared-state-space address of a generic pointer into shared memory.
__device__ __forceinline__ unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// Copies 16 bytes global → shared asynchronously; bytes past `src_bytes` (0..16) are zero-filled and not read.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, unsigned src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8×8 b16 matrices from shared memory; lane l supplies the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
// The same with each matrix transposed on the way into registers.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// d = a·b + d for one m16n8k16 fragment (a row-major 16×16, b column-major 16×8, f32 accumulators).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The arguments of one GEMM, as the entry points receive them.
template <typename OutT> struct Args {
    const bf16* a;  // [m, k] row-major, row stride lda
    const bf16* b;  // "nt": [n, k] row-major; "nn": [k, n] row-major; row stride ldb
    OutT* c;        // [m, n] row-major, row stride ldc
    unsigned m, n, k, lda, ldb, ldc;
    float alpha, beta;
};

// Writes v0, v1 (+ beta times the old values when beta ≠ 0) to dst[0] and, when `second`, dst[1]; `pair` selects
// one 2-element access (dst is then 2-element aligned and both columns are in range).
__device__ __forceinline__ void store_pair(float* dst, float v0, float v1, float beta, bool pair, bool second) {
    if (pair) {
        float2* d2 = reinterpret_cast<float2*>(dst);
        if (beta != 0.0f) {
            const float2 old = *d2;
            v0 += beta * old.x;
            v1 += beta * old.y;
        }
        *d2 = make_float2(v0, v1);
        return;
    }
    if (beta != 0.0f) v0 += beta * dst[0];
    dst[0] = v0;
    if (second) {
        if (beta != 0.0f) v1 += beta * dst[1];
        dst[1] = v1;
    }
}
__device__ __forceinline__ void store_pair(bf16* dst, float v0, float v1, float beta, bool pair, bool second) {
    if (pair) {
        __nv_bfloat162* d2 = reinterpret_cast<__nv_bfloat162*>(dst);
        if (beta != 0.0f) {
            const float2 old = __bfloat1622float2(*d2);
            v0 += beta * old.x;
            v1 += beta * old.y;
        }
        *d2 = __floats2bfloat162_rn(v0, v1);
        return;
    }
    if (beta != 0.0f) v0 += beta * __bfloat162float(dst[0]);
    dst[0] = __float2bfloat16_rn(v0);
    if (second) {
        if (beta != 0.0f) v1 += beta * __bfloat162float(dst[1]);
        dst[1] = __float2bfloat16_rn(v1);
    }
}

// Fills one k-major tile [rows = BM or BN][BK] from rows r0.. and columns k0.. of a [rows_total, k] matrix.
template <bool ALIGNED>
__device__ __forceinline__ void load_kmajor(bf16* tile, const bf16* __restrict__ g, unsigned ld, unsigned rows_total,
                                            unsigned k, unsigned r0, unsigned k0) {
    if (ALIGNED) {
#pragma unroll
        for (int i = 0; i < BM * BK / 8 / kThreads; ++i) {
            const int id = threadIdx.x + i * kThreads;
            const int row = id >> 2, chunk = id & 3;
            const unsigned gr = r0 + row, gk = k0 + chunk * 8;
            const bool in = gr < rows_total && gk < k;
            const unsigned bytes = in ? min(8u, k - gk) * 2 : 0;
            // A chunk that reads nothing still needs a valid address: the matrix base.
            const bf16* src = in ? g + (unsigned long long)gr * ld + gk : g;
            cp_async16(smem_addr(tile + kmajor_off(row, chunk)), src, bytes);
        }
    } else {
        const unsigned short* gs = reinterpret_cast<const unsigned short*>(g);
        unsigned short* ts = reinterpret_cast<unsigned short*>(tile);
#pragma unroll 4
        for (int i = 0; i < BM * BK / kThreads; ++i) {
            const int id = threadIdx.x + i * kThreads;
            const int row = id / BK, col = id % BK;
            const unsigned gr = r0 + row, gk = k0 + col;
            const unsigned short v = gr < rows_total && gk < k ? gs[(unsigned long long)gr * ld + gk] : 0;
            ts[kmajor_off(row, col >> 3) + (col & 7)] = v;
        }
    }
}

// Fills one n-major tile [BK][BN] from rows k0.. and columns n0.. of a [k, n] matrix.
template <bool ALIGNED>
__device__ __forceinline__ void load_nmajor(bf16* tile, const bf16* __restrict__ g, unsigned ld, unsigned k,
                                            unsigned n, unsigned k0, unsigned n0) {
    if (ALIGNED) {
#pragma unroll
        for (int i = 0; i < BK * BN / 8 / kThreads; ++i) {
            const int id = threadIdx.x + i * kThreads;
            const int row = id >> 4, chunk = id & 15;
            const unsigned gk = k0 + row, gn = n0 + chunk * 8;
            const bool in = gk < k && gn < n;
            const unsigned bytes = in ? min(8u, n - gn) * 2 : 0;
            const bf16* src = in ? g + (unsigned long long)gk * ld + gn : g;
            cp_async16(smem_addr(tile + nmajor_off(row, chunk)), src, bytes);
        }
    } else {
        const unsigned short* gs = reinterpret_cast<const unsigned short*>(g);
        unsigned short* ts = reinterpret_cast<unsigned short*>(tile);
#pragma unroll 4
        for (int i = 0; i < BK * BN / kThreads; ++i) {
            const int id = threadIdx.x + i * kThreads;
            const int row = id / BN, col = id % BN;
            const unsigned gk = k0 + row, gn = n0 + col;
            const unsigned short v = gk < k && gn < n ? gs[(unsigned long long)gk * ld + gn] : 0;
            ts[nmajor_off(row, col >> 3) + (col & 7)] = v;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels.

template <Layout L, bool ALIGNED, typename OutT>
__device__ __forceinline__ void gemm_body(const Args<OutT>& p, bf16* smem) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int warp_m = warp / 4, warp_n = warp % 4;
    const unsigned m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int ktiles = (int)((p.k + BK - 1) / BK);

    // Stage s holds A at smem + s·2·kTileElems and B right after it.
    auto load_stage = [&](int stage, int kt) {
        bf16* sa = smem + stage * 2 * kTileElems;
        bf16* sb = sa + kTileElems;
        const unsigned k0 = kt * BK;
        load_kmajor<ALIGNED>(sa, p.a, p.lda, p.m, p.k, m0, k0);
        if (L == Layout::NT)
            load_kmajor<ALIGNED>(sb, p.b, p.ldb, p.n, p.k, n0, k0);
        else
            load_nmajor<ALIGNED>(sb, p.b, p.ldb, p.k, p.n, k0, n0);
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // Prologue: k tiles 0 .. kStages − 2 in flight, one commit group each (empty groups past the last tile keep
    // the wait count uniform).
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < ktiles) load_stage(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        // Tile kt has landed once at most kStages − 2 groups are pending; the barrier then also ensures that
        // every warp has finished computing tile kt − 1, whose stage the prefetch below overwrites.
        cp_async_wait<kStages - 2>();
        __syncthreads();
        const int next = kt + kStages - 1;
        if (next < ktiles) load_stage(next % kStages, next);
        cp_async_commit();

        const bf16* sa = smem + (kt % kStages) * 2 * kTileElems;
        const bf16* sb = sa + kTileElems;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks) {
            // B fragments of the warp's four n8 columns: each ldmatrix.x4 yields (b0, b1) of two of them.
            unsigned bfrag[NT][2];
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                unsigned r[4];
                if (L == Layout::NT) {
                    const int row = warp_n * WN + np * 16 + (lane & 7) + 8 * (lane >> 4);
                    const int chunk = ks * 2 + ((lane >> 3) & 1);
                    ldmatrix_x4(r, smem_addr(sb + kmajor_off(row, chunk)));
                } else {
                    const int row = ks * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
                    const int chunk = (warp_n * WN + np * 16) / 8 + (lane >> 4);
                    ldmatrix_x4_trans(r, smem_addr(sb + nmajor_off(row, chunk)));
                }
                bfrag[2 * np][0] = r[0];
                bfrag[2 * np][1] = r[1];
                bfrag[2 * np + 1][0] = r[2];
                bfrag[2 * np + 1][1] = r[3];
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                unsigned afrag[4];
                const int row = warp_m * WM + mt * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
                const int chunk = ks * 2 + (lane >> 4);
                ldmatrix_x4(afrag, smem_addr(sa + kmajor_off(row, chunk)));
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) mma_bf16(acc[mt][nt], afrag, bfrag[nt][0], bfrag[nt][1]);
            }
        }
    }

    // Epilogue: lane l holds rows l/4 and l/4 + 8, columns 2·(l % 4) + {0, 1} of each m16n8 fragment; the two
    // columns go out as one 2-element store when C's rows and base allow it.
    const bool pairs = p.ldc % 2 == 0 && (reinterpret_cast<unsigned long long>(p.c) % (2 * sizeof(OutT))) == 0;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const unsigned r = m0 + warp_m * WM + mt * 16 + lane / 4 + half * 8;
                const unsigned c = n0 + warp_n * WN + nt * 8 + 2 * (lane % 4);
                if (r < p.m && c < p.n)
                    store_pair(p.c + (unsigned long long)r * p.ldc + c, p.alpha * acc[mt][nt][2 * half],
                               p.alpha * acc[mt][nt][2 * half + 1], p.beta, pairs && c + 1 < p.n, c + 1 < p.n);
            }
}

template <Layout L, typename OutT> __device__ __forceinline__ void gemm(const Args<OutT>& p) {
    __shared__ __align__(128) bf16 smem[kStages * 2 * kTileElems];
    // cp.async moves 16-byte chunks: every row start must be 16-byte aligned, else the scalar path runs.
    const unsigned long long bases = reinterpret_cast<unsigned long long>(p.a) | reinterpret_cast<unsigned long long>(p.b);
    const bool aligned = (bases & 15) == 0 && p.lda % 8 == 0 && p.ldb % 8 == 0;
    if (aligned)
        gemm_body<L, true, OutT>(p, smem);
    else
        gemm_body<L, false, OutT>(p, smem);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Entry points: gemm_<layout>_<in dtype>[_<out dtype>]; the out dtype defaults to the in dtype.
// a [m, k] (lda), b [n, k] for nt or [k, n] for nn (ldb), c [m, n] (ldc); all row-major.

extern "C" __global__ void __launch_bounds__(kThreads, 2)
    gemm_nt_bf16(const bf16* a, const bf16* b, bf16* c, unsigned m, unsigned n, unsigned k, unsigned lda,
                 unsigned ldb, unsigned ldc, float alpha, float beta) {
    gemm<Layout::NT, bf16>({a, b, c, m, n, k, lda, ldb, ldc, alpha, beta});
}
extern "C" __global__ void __launch_bounds__(kThreads, 2)
    gemm_nt_bf16_f32(const bf16* a, const bf16* b, float* c, unsigned m, unsigned n, unsigned k, unsigned lda,
                     unsigned ldb, unsigned ldc, float alpha, float beta) {
    gemm<Layout::NT, float>({a, b, c, m, n, k, lda, ldb, ldc, alpha, beta});
}
extern "C" __global__ void __launch_bounds__(kThreads, 2)
    gemm_nn_bf16(const bf16* a, const bf16* b, bf16* c, unsigned m, unsigned n, unsigned k, unsigned lda,
                 unsigned ldb, unsigned ldc, float alpha, float beta) {
    gemm<Layout::NN, bf16>({a, b, c, m, n, k, lda, ldb, ldc, alpha, beta});
}
extern "C" __global__ void __launch_bounds__(kThreads, 2)
    gemm_nn_bf16_f32(const bf16* a, const bf16* b, float* c, unsigned m, unsigned n, unsigned k, unsigned lda,
                     unsigned ldb, unsigned ldc, float alpha, float beta) {
    gemm<Layout::NN, float>({a, b, c, m, n, k, lda, ldb, ldc, alpha, beta});
}
