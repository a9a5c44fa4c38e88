// Skinny GEMMs (decode at small batch): y[m, n] = x[m, k] @ w[n, k]^T for m <= kGemvMaxM, bound by reading
// w once. cuBLASLt's kernels for these shapes read the weights at 60-83 % of HBM bandwidth and add a
// split-K reduce launch (measured with ncu on an H100, Llama-3.1-8B shapes at m = 1); here a warp owns
// one row of w (four when m > 1), streams it with 16-byte loads that skip L1 (several in flight per lane),
// and dots it with every row of x, which stays in L1/L2 (x is at most 4 x 14336 bf16). fp32 accumulation,
// one warp reduction per output.
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/check.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/pdl.h"

namespace troupe::kernels::cuda {
namespace {

constexpr int kGemvWarps = 4;  // per block: small blocks spread the rows evenly over the SMs
constexpr int kUnroll = 8;     // 16-byte loads of w in flight per lane (m = 1)

// A 16-byte load of streamed data: not kept in L1, where x lives, and in L2 under `policy`.
__device__ __forceinline__ uint4 load_stream(const uint4* p, uint64_t policy) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p), "l"(policy));
  return v;
}

// The L2 policy of the weight loads: evict first (each weight is read once a step; H200, perf-notes v12),
// or the default priority where TROUPE_GEMV_EVICT_FIRST=0.
__device__ __forceinline__ uint64_t weight_policy(bool evict_first) {
  uint64_t policy;
  if (evict_first) {
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  } else {
    asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(policy));
  }
  return policy;
}

__device__ __forceinline__ float dot8(const uint4& a, const uint4& b, float acc) {
  const __nv_bfloat162* ha = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* hb = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fa = __bfloat1622float2(ha[i]);
    const float2 fb = __bfloat1622float2(hb[i]);
    acc = fmaf(fa.x, fb.x, acc);
    acc = fmaf(fa.y, fb.y, acc);
  }
  return acc;
}

__device__ __forceinline__ void store(bf16* y, float v) { *y = __float2bfloat16(v); }
__device__ __forceinline__ void store(float* y, float v) { *y = v; }

// kR outputs per warp: each 16-byte chunk of x read from L1 (and converted to fp32) serves kR rows of w,
// which is what bounds the kernel once m > 1 (m loads of x per load of w otherwise).
// kGated: w is a merged [2n, k] gate/up projection and y[m, j] = silu(gate[m, j]) * up[m, j], the gate and
// up rows j and n + j read by the same warp (so the MLP's activation costs no launch and no pass over a
// [m, 2n] intermediate). Gate and up are rounded to bf16 before the SiLU, as the unfused path (GEMM to
// bf16, then silu_mul) does.
template <int M, int kR, bool kGated, typename OutT, bool kPipe>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(const bf16* __restrict__ x,  // [M, k]
                const bf16* __restrict__ w,  // [n, k], or [2n, k] when kGated
                OutT* __restrict__ y,        // [M, n]
                int n, int k, bool early_trigger, bool evict_first) {
  constexpr int kRows = kGated ? 2 * kR : kR;                      // rows of w per warp
  constexpr int kU = kRows == 1 ? kUnroll : (kRows == 2 ? 2 : 1);  // chunks per row in flight per lane
  const int row0 = (blockIdx.x * kGemvWarps + threadIdx.x / 32) * kR, lane = threadIdx.x % 32;
  if (row0 >= n) return;
  const int chunks = k / 8;  // 16-byte chunks per row (k % 8 == 0, checked by the launcher)
  const uint64_t policy = weight_policy(evict_first);
  const uint4* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {  // outputs past n re-read the last row and are not stored
    const int out = min(row0 + r % kR, n - 1);
    wr[r] = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(r < kR ? out : n + out) * k);
  }
  // Before the previous kernel has finished (programmatic dependent launch): this lane's first chunks of its
  // weight rows, which that kernel does not write, are requested into registers. With early triggers
  // (pdl.h) this kernel launches while the one before still runs, so these loads overlap its tail, or, after
  // a grid smaller than the GPU (a norm, decode attention at batch 1), fill HBM time that would idle.
  // (Requesting them into L2 instead, and more of each row, measured slower: perf-notes v9.)
  int c = lane;
  const uint4* xr = reinterpret_cast<const uint4*>(x);
  float acc[kRows][M];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;
  // kB chunks a lane per batch: a batch of weights is loaded into registers, then dotted with x.
  constexpr int kB = kPipe ? kU / 2 : kU;
  auto full = [&](int c0) { return c0 + 32 * (kB - 1) < chunks; };
  auto load_batch = [&](uint4(&wb)[kB][kRows], int c0) {
#pragma unroll
    for (int u = 0; u < kB; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r) wb[u][r] = load_stream(wr[r] + c0 + 32 * u, policy);
  };
  auto dot_batch = [&](const uint4(&wb)[kB][kRows], int c0) {
#pragma unroll
    for (int u = 0; u < kB; ++u)
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint4 xv = __ldg(xr + m * chunks + c0 + 32 * u);
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r][m] = dot8(wb[u][r], xv, acc[r][m]);
      }
  };
  uint4 wa[kB][kRows], wb[kB][kRows];
  const bool first_full = full(c);
  if constexpr (kPipe) {
    // Two half-size batches: while one is dotted the next is loading, so a lane always has chunks in flight
    // (one batch of kU otherwise goes idle while it is dotted). Both first batches go out before the wait.
    // The same chunks in the same order: the same bits.
    const bool second_full = first_full && full(c + 32 * kB);
    if (first_full) load_batch(wa, c);
    if (second_full) load_batch(wb, c + 32 * kB);
    if (early_trigger) pdl_trigger();
    pdl_wait();
    if (first_full) {
      for (;;) {  // wa holds batch c; wb holds batch c + 32 kB if that batch is full
        dot_batch(wa, c);
        c += 32 * kB;
        if (!full(c)) break;
        if (full(c + 32 * kB)) load_batch(wa, c + 32 * kB);
        dot_batch(wb, c);
        c += 32 * kB;
        if (!full(c)) break;
        if (full(c + 32 * kB)) load_batch(wb, c + 32 * kB);
      }
    }
  } else {
    if (first_full) load_batch(wa, c);
    if (early_trigger) pdl_trigger();
    pdl_wait();
    if (first_full) {
      dot_batch(wa, c);
      c += 32 * kB;
    }
    for (; full(c); c += 32 * kB) {
      load_batch(wa, c);
      dot_batch(wa, c);
    }
  }
  (void)wb;
  for (; c < chunks; c += 32) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) wa[0][r] = load_stream(wr[r] + c, policy);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const uint4 xv = __ldg(xr + m * chunks + c);
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r][m] = dot8(wa[0][r], xv, acc[r][m]);
    }
  }
  if (!early_trigger) pdl_trigger();
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int off = 16; off > 0; off /= 2) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], off);
    }
    // Lane r * M + m stores output (m, row0 + r).
#pragma unroll
  for (int r = 0; r < kR; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (lane != (r * M + m) % 32 || row0 + r >= n) continue;
      float v = acc[r][m];
      if constexpr (kGated) {
        const float g = __bfloat162float(__float2bfloat16(v));
        const float u = __bfloat162float(__float2bfloat16(acc[kR + r][m]));
        v = g / (1.0f + expf(-g)) * u;
      }
      store(y + static_cast<int64_t>(m) * n + row0 + r, v);
    }
}

template <int M, bool kGated, typename OutT>
void launch_gemv_m(const bf16* x, const bf16* w, OutT* y, int64_t n, int64_t k, cudaStream_t stream) {
  constexpr int kR = M == 1 ? 1 : (kGated ? 2 : 4);
  const dim3 grid(static_cast<unsigned>((n + kGemvWarps * kR - 1) / (kGemvWarps * kR)));
  constexpr int kRows = kGated ? 2 * kR : kR;
  constexpr bool kCanPipe = kRows <= 2;  // two chunks or more a lane in flight (see kU)
  static const bool pipe_on = [] {       // TROUPE_GEMV_PIPE=0: one batch at a time (benchmarks)
    const char* e = std::getenv("TROUPE_GEMV_PIPE");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  auto kernel = kCanPipe && pipe_on ? gemv_kernel<M, kR, kGated, OutT, kCanPipe>
                                    : gemv_kernel<M, kR, kGated, OutT, false>;
  static const bool evict_first = [] {
    const char* e = std::getenv("TROUPE_GEMV_EVICT_FIRST");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  launch_pdl(kernel, grid, dim3(kGemvWarps * 32), 0, stream, x, w, y, static_cast<int>(n),
             static_cast<int>(k), pdl_early_triggers(), evict_first);
}

// n: outputs per row of y (the gated kernel reads 2n rows of w).
template <bool kGated, typename OutT>
void launch_gemv(const bf16* x, const bf16* w, OutT* y, int64_t m, int64_t n, int64_t k,
                 cudaStream_t stream) {
  const int64_t w_rows = kGated ? 2 * n : n;
  TROUPE_KERNEL_REQUIRE(
      gemv_supports(x, w, m, w_rows, k),
      "gemv: unsupported shape m=" << m << " n=" << w_rows << " k=" << k << " or unaligned operands");
  switch (m) {
#define TROUPE_GEMV_CASE(M)                                \
  case M:                                                  \
    launch_gemv_m<M, kGated, OutT>(x, w, y, n, k, stream); \
    break;
    TROUPE_GEMV_CASE(1)
    TROUPE_GEMV_CASE(2)
    TROUPE_GEMV_CASE(3)
    TROUPE_GEMV_CASE(4)
#undef TROUPE_GEMV_CASE
    default:
      TROUPE_KERNEL_REQUIRE(false, "gemv: m " << m << " not in [1, " << kGemvMaxM << "]");
  }
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool gemv_supports(const void* x, const void* w, int64_t m, int64_t n, int64_t k) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return m >= 1 && m <= kGemvMaxM && n > 0 && k > 0 && k % 8 == 0 && n < (int64_t{1} << 31) &&
         k < (int64_t{1} << 31) && aligned(x) && aligned(w);
}

void gemv_xwt(const bf16* x, const bf16* w, bf16* y, int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
  launch_gemv<false>(x, w, y, m, n, k, stream);
}

void gemv_xwt_f32(const bf16* x, const bf16* w, float* y, int64_t m, int64_t n, int64_t k,
                  cudaStream_t stream) {
  launch_gemv<false>(x, w, y, m, n, k, stream);
}

void gemv_gate_up_silu(const bf16* x, const bf16* w_gate_up, bf16* act, int64_t m, int64_t inter, int64_t k,
                       cudaStream_t stream) {
  launch_gemv<true>(x, w_gate_up, act, m, inter, k, stream);
}

}  // namespace troupe::kernels::cuda
