/*
kernels.cu: small kernels that exercise the PTX interpreter (tests/it/ptxsim.rs checks each against Rust).
Math:      see each kernel's comment; every result has a plain Rust reference in the test.
Layout:    1-D arrays of n elements, one thread per element unless stated.
Traffic:   tiny; these are correctness probes, not workloads.
Launch:    1-D grids of ceil(n / block) blocks; blocks that are not multiples of 32 on purpose.
Reference: tests/it/ptxsim.rs   Test: tests/it/ptxsim.rs
*/
#include <cuda_fp16.h>

// Nested if/else and a loop whose trip count differs per lane: out[i] = f(x[i]).
extern "C" __global__ void sim_diverge(const int* x, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int v = x[i];
    int acc = 0;
    if (v % 3 == 0) {
        if (v & 1) acc = v * 7; else acc = v - 11;
    } else if (v % 3 == 1) {
        for (int k = 0; k < (v & 15); ++k) acc += k * v;
    } else {
        int k = v & 31;
        while (k > 0) { acc ^= k << 3; k -= 3; }
    }
    out[i] = acc;
}

// Block sum with a shared-memory tree and barriers; blockDim.x is a power of two (<= 256).
extern "C" __global__ void sim_block_sum(const float* x, float* out, int n) {
    __shared__ float s[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if (threadIdx.x < h) s[threadIdx.x] += s[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// Warp sum with shfl.down, then one atomicAdd per warp into out[0].
extern "C" __global__ void sim_warp_sum(const int* x, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = i < n ? x[i] : 0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
    if ((threadIdx.x & 31) == 0) atomicAdd(out, v);
}

// Per-warp xor butterfly max and broadcast from lane 5 via shfl.idx: out[i] = max over the warp + x[warp lane 5].
extern "C" __global__ void sim_shfl_mix(const int* x, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = i < n ? x[i] : -1000000;
    int m = v;
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffff, m, o));
    int b = __shfl_sync(0xffffffff, v, 5);
    int u = __shfl_up_sync(0xffffffff, v, 3);
    if (i < n) out[i] = m + b + u;
}

// Ballot / any / all of x[i] > t per warp: out[i] = popc(ballot) * 4 + any * 2 + all.
extern "C" __global__ void sim_vote(const int* x, int* out, int n, int t) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    bool p = i < n && x[i] > t;
    unsigned b = __ballot_sync(0xffffffff, p);
    int an = __any_sync(0xffffffff, p);
    int al = __all_sync(0xffffffff, p);
    if (i < n) out[i] = __popc(b) * 4 + an * 2 + al;
}

// Histogram of x[i] mod bins with shared atomics, merged with global atomics.
extern "C" __global__ void sim_histogram(const unsigned* x, unsigned* hist, int n, int bins) {
    extern __shared__ unsigned h[];
    for (int b = threadIdx.x; b < bins; b += blockDim.x) h[b] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        atomicAdd(&h[x[i] % bins], 1u);
    __syncthreads();
    for (int b = threadIdx.x; b < bins; b += blockDim.x) atomicAdd(&hist[b], h[b]);
}

__device__ __noinline__ float sim_poly(float x, int k) {
    float r = 0.0f;
    for (int j = 0; j < k; ++j) r = r * x + (float)(j + 1);
    return r;
}

// A call into a non-inlined device function: out[i] = poly(x[i], 1 + i % 5).
extern "C" __global__ void sim_call(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = sim_poly(x[i], 1 + i % 5);
}

// A per-thread local array indexed dynamically: out[i] = a[(x[i]) % 16] where a[j] = j * j + i.
extern "C" __global__ void sim_local(const int* x, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    volatile int a[16];
    for (int j = 0; j < 16; ++j) a[j] = j * j + i;
    out[i] = a[(unsigned)x[i] % 16];
}

// 64-bit integer math: out[i] = (a * b) >> 7 ^ (a / (b | 1)) + mulhi(a, b) + (a % 1000003).
extern "C" __global__ void sim_math64(const unsigned long long* a, const unsigned long long* b,
                                      unsigned long long* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned long long x = a[i], y = b[i];
    out[i] = ((x * y) >> 7) ^ ((x / (y | 1)) + __umul64hi(x, y) + (x % 1000003ull));
}

// Float math: out[i] = fmaf(x, y, 1) + sqrtf(|x|) + x / (y + 3) + (float)(int)(x * 8) + __half2float(__float2half(y)).
extern "C" __global__ void sim_float(const float* x, const float* y, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float a = x[i], b = y[i];
    out[i] = fmaf(a, b, 1.0f) + sqrtf(fabsf(a)) + a / (b + 3.0f) + (float)(int)(a * 8.0f) + __half2float(__float2half(b));
}

// Coalesced copy of n floats (counter test).
extern "C" __global__ void sim_copy(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
}

// Strided read: y[i] = x[i * stride] (counter test).
extern "C" __global__ void sim_strided(const float* x, float* y, int n, int stride) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i * stride];
}

// Shared accesses with a word stride (bank conflicts): one block of 32 threads; y[t] = s[(t * stride) % 1024].
extern "C" __global__ void sim_banks(const float* x, float* y, int stride) {
    __shared__ float s[1024];
    for (int j = threadIdx.x; j < 1024; j += blockDim.x) s[j] = x[j];
    __syncthreads();
    y[threadIdx.x] = s[(threadIdx.x * stride) % 1024];
}

// A loop-heavy kernel for the simulator bench: k rounds of integer and f32 work per thread.
extern "C" __global__ void sim_loop(float* out, int n, int k) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float a = (float)i;
    unsigned h = i;
    for (int j = 0; j < k; ++j) {
        h = h * 1664525u + 1013904223u;
        a = fmaf(a, 0.999f, (float)(h >> 24));
    }
    out[i] = a;
}

__constant__ float sim_coef[4] = {0.5f, -1.25f, 2.0f, 3.5f};
__device__ unsigned sim_ticket = 7;

// Module variables: a __constant__ table with an initializer and a __device__ counter handed out by atomics.
// out[i] = coef[i % 4] * x[i]; order[i] = the ticket thread i drew (a permutation of 7 … 7 + n - 1).
extern "C" __global__ void sim_module_vars(const float* x, float* out, unsigned* order, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = sim_coef[i % 4] * x[i];
    order[i] = atomicAdd(&sim_ticket, 1u);
}

extern "C" __device__ int vprintf(const char* format, const char* args);

// Device printf (what printf compiles to) is skipped by the simulator; the kernel still runs: y[i] = 3·i.
extern "C" __global__ void sim_printf(int* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    vprintf("thread %d\n", (const char*)&i);
    y[i] = 3 * i;
}

__device__ __noinline__ int sim_twice(int v) { return 2 * v + 1; }

// A divergent call followed by a warp shuffle: the lanes must reconverge after the call before the shuffle.
// out[i] = w(i) + w(i ^ 1) where w(j) = x[j] odd ? 2·x[j] + 1 : x[j].
extern "C" __global__ void sim_call_diverge(const int* x, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = i < n ? x[i] : 0;
    if (v & 1) v = sim_twice(v);
    int s = __shfl_xor_sync(0xffffffff, v, 1);
    if (i < n) out[i] = v + s;
}
