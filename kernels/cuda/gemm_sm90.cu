// y[m, n] = x[m, k] @ w[n, k]^T on Hopper warpgroup MMAs (wgmma, sm_90a) for decode-sized batches.
//
// Why our own kernel: at m = 256 token rows the Llama-3.1-8B projections are about as much weight stream
// as compute (256 FLOP a weight byte; the H200's ridge is ~210), and cuBLASLt runs them at 490-630 TFLOP/s
// (o, q/k/v: few tiles and split-K with a reduce kernel). A kernel of our own takes programmatic dependent
// launch (its weight loads start before the previous kernel ends) and is where fused epilogues can go.
// Measured against cuBLASLt in `troupe bench kernels --group batch_gemm` (docs/perf-notes.md v11).
//
// Work split (stream-K): a tile is 128 weight rows x 256 token rows; its k runs in 64-wide iterations. The
// (tile, iteration) sequence, tile-major, is cut into one equal contiguous range per block, and the grid is
// one block an SM, so every SM streams the same number of iterations whatever the tile count. A range
// starts in the middle (or at the tail) of one tile, covers whole tiles, and ends with the head of another.
// A segment that starts past k = 0 writes its fp32 partial tile to the workspace (at the start of its
// block's range, so early) and raises the block's flag; the block that holds the tile's head (its range's
// last segment, so late) waits for those flags, adds the partials in block order and stores the tile. The
// sum's order is fixed by the shape and the grid, so results do not depend on timing. Waits only go to
// higher-numbered blocks, all resident at once (one block an SM, at most an SM count of blocks).
//
// Block: 3 warpgroups. Warpgroup 0's first thread is the producer: per iteration it waits for a free stage
// of the 4-stage ring and issues two TMA loads (w: 128 x 64, x: up to 256 x 64, 128-byte swizzle) that
// complete on the stage's "full" mbarrier; the first stages' w loads go out before the programmatic wait.
// Warpgroups 1 and 2 consume: each owns 64 of the tile's weight rows and runs wgmma m64n256k16 x 4 an
// iteration (A = w rows, B = x rows, both K-major in shared memory), keeps one MMA group in flight and
// frees the previous stage on its "empty" mbarrier.
//
// Shared memory: stage s at s * 48 KB: w tile (16 KB: row r at r * 128 bytes, 16-byte chunk c at c ^ (r %
// 8), TMA's 128-byte swizzle), then the x tile (32 KB, same layout); descriptors advance 32 bytes per k16
// step, stride byte offset 1024 (eight rows). Then the 2 x 4 mbarriers.
//
// Accumulator of m64n256 (warp q of the warpgroup, lane = 4 g + t): d[4 j + 2 h + e] = (weight row 16 q + g
// + 8 h, token 8 j + 2 t + e). The store pairs rows g and g + 1 through one shuffle with lane ^ 4 (even g
// keeps rows g, g + 1; odd g rows g + 7, g + 8), so a warp writes 32 contiguous bytes per token row.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/check.h"
#include "kernels/cuda/gemm_sm90.cuh"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/sm90.cuh"

namespace troupe::kernels::cuda::detail {
namespace {

using namespace sm90;
using bf16 = __nv_bfloat16;

constexpr int kBM = 128;         // weight rows a tile: 2 consumer warpgroups x 64
constexpr int kBN = 256;         // token rows a tile (the wgmma N)
constexpr int kBK = 64;          // k an iteration: one 128-byte swizzle row of bf16
constexpr int kStages = 4;       // ring stages
constexpr int kThreads = 384;    // producer warpgroup + 2 consumer warpgroups
constexpr int kConsumers = 256;  // consumer threads
constexpr uint32_t kWBytes = kBM * kBK * 2, kXBytes = kBN * kBK * 2, kStageBytes = kWBytes + kXBytes;
constexpr int kAcc = kBN / 2;                                 // fp32 accumulators a consumer thread
constexpr size_t kPartialFloats = size_t{kConsumers} * kAcc;  // one block's partial tile
constexpr uint32_t kChunkBytes = kPartialFloats * 4 / 2;      // half a partial, staged in the ring's memory
static_assert(3 * kChunkBytes <= kStages * kStageBytes, "three chunks fit in the stages");
constexpr int kMaxBlocks = 1024;                         // grid size the workspace's flag area holds
constexpr size_t kFlagBytes = kMaxBlocks * sizeof(int);  // the flags, then the partials
// Stages, then 2 x kStages mbarriers, plus slack to align the base to 1024 bytes (the swizzle atom).
constexpr uint32_t kSmemBytes = kStages * kStageBytes + 2 * kStages * 8 + 1024;

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

// First (tile, iteration) index of block c's range.
__device__ __forceinline__ int64_t range_begin(int c, int64_t total, int blocks) {
  return static_cast<int64_t>(c) * total / blocks;
}

#define TROUPE_WGMMA_D128                                                                            \
  "{"                                                                                                \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,"   \
  "%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49," \
  "%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73," \
  "%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,%96,%97," \
  "%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,"    \
  "%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"                                           \
  "}"

// d += A B, m64n256k16, A and B K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n256(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " TROUPE_WGMMA_D128
               ", %128, %129, 1, 1, 1, 0, 0;\n"
               : TROUPE_WGMMA_ACC64(d, 0), TROUPE_WGMMA_ACC64(d, 64)
               : "l"(desc_a), "l"(desc_b));
}

// Named barrier 1 over the two consumer warpgroups (the producer warpgroup does not take part).
__device__ __forceinline__ void consumer_sync() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumers) : "memory");
}

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release(int* p, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}
__device__ __forceinline__ float4 ld_shared_f4(uint32_t addr) {
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}

__device__ __forceinline__ void add4(float (&acc)[kAcc], int i, float4 v) {
  acc[i] += v.x;
  acc[i + 1] += v.y;
  acc[i + 2] += v.z;
  acc[i + 3] += v.w;
}

__device__ __forceinline__ void store_pair(bf16* p, float lo, float hi) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(lo, hi);
}
__device__ __forceinline__ void store_pair(float* p, float lo, float hi) {
  *reinterpret_cast<float2*>(p) = make_float2(lo, hi);
}

// The tile's head, always its block's last segment, adds the partials of the `parts` blocks after it, in
// block order. The producer is done and every stage consumed, so the ring's shared memory stages them: each
// thread copies (cp.async, nothing held in registers) and reads back only its own fragments, half a partial
// (64 KB) a chunk, two chunks in flight ahead of the one being added. The staged reduce measured 29 µs for
// the o projection against 34 µs with loads into registers (register pressure let few be in flight).
__device__ __forceinline__ void add_partials(float (&acc)[kAcc], uint32_t smem, int c, int parts, int ctid,
                                             const float* __restrict__ partials, int* __restrict__ flags) {
  const int chunks = 2 * parts;
  const auto issue = [&](int q) {
    const int c2 = c + 1 + q / 2;
    if (q % 2 == 0) {
      if (ctid == 0) {
        while (ld_acquire(flags + c2) == 0) __nanosleep(32);
        flags[c2] = 0;  // read once: zero again for the next call
      }
      consumer_sync();  // also: both warpgroups' MMAs are done with the stages
    }
    const float4* src = reinterpret_cast<const float4*>(partials + c2 * kPartialFloats) +
                        (q % 2) * (kAcc / 8) * kConsumers + ctid;
    const uint32_t dst = smem + (q % 3) * kChunkBytes + ctid * 16;
#pragma unroll
    for (int j = 0; j < kAcc / 8; ++j) cp_async16(dst + j * kConsumers * 16, src + j * kConsumers);
    cp_async_commit();
  };
  issue(0);
  if (chunks > 1) issue(1);
  for (int q = 0; q < chunks; ++q) {
    if (q + 2 < chunks) issue(q + 2);
    const int later = min(2, chunks - 1 - q);  // groups committed after chunk q
    if (later == 2) {
      cp_async_wait<2>();
    } else if (later == 1) {
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    // Two loops with constant indices: a runtime half index would put acc in local memory.
    const uint32_t chunk = smem + (q % 3) * kChunkBytes + ctid * 16;
    if (q % 2 == 0) {
#pragma unroll
      for (int j = 0; j < kAcc / 8; ++j) add4(acc, 4 * j, ld_shared_f4(chunk + j * kConsumers * 16));
    } else {
#pragma unroll
      for (int j = 0; j < kAcc / 8; ++j)
        add4(acc, 4 * (j + kAcc / 8), ld_shared_f4(chunk + j * kConsumers * 16));
    }
  }
}

#endif  // sm_90a

template <typename OutT>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_sm90_kernel(const __grid_constant__ CUtensorMap tm_w, const __grid_constant__ CUtensorMap tm_x,
                     OutT* __restrict__ y,  // [m, n]
                     int m, int n, int k,
                     int x_box,                     // token rows of x's TMA box: min(m, 256) rounded up to 8
                     float* __restrict__ partials,  // [gridDim.x, kPartialFloats]
                     int* __restrict__ flags) {  // [gridDim.x]: 1 while a block's partial awaits its reader
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  const uint32_t smem = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023u) & ~1023u;
  const uint32_t full_bar = smem + kStages * kStageBytes, empty_bar = full_bar + kStages * 8;
  const int tiles_n = (n + kBM - 1) / kBM, tiles_m = (m + kBN - 1) / kBN, kt = (k + kBK - 1) / kBK;
  const int64_t total = static_cast<int64_t>(tiles_n) * tiles_m * kt;
  const int blocks = gridDim.x, c = blockIdx.x;
  const int64_t begin = range_begin(c, total, blocks), end = range_begin(c + 1, total, blocks);
  // x's box holds the token tile's real rows only: TMA's zero fill past the tensor's end measured slow
  // (gate/up at m = 136: 163 µs with a 256-row box, 94 µs with a 136-row one). Stage rows past the box keep
  // stale values; they feed only output columns past m, which are never stored.
  const uint32_t stage_tx = kWBytes + static_cast<uint32_t>(x_box) * kBK * 2;

  if (threadIdx.x == 0) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&tm_w)) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&tm_x)) : "memory");
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full_bar + 8 * s, 1);
      mbar_init(empty_bar + 8 * s, 2);  // one thread of each consumer warpgroup
    }
    mbar_init_fence();
  }
  __syncthreads();
  pdl_trigger();

  if (threadIdx.x < 128) {  // producer
    if (threadIdx.x == 0) {
      const auto coords = [&](int64_t it, int& kk, int& tn, int& tm) {
        const int64_t t = it / kt;
        kk = static_cast<int>(it - t * kt);
        tn = static_cast<int>(t % tiles_n);
        tm = static_cast<int>(t / tiles_n);
      };
      // The first stages' weights are no earlier kernel's output: they load before the programmatic wait,
      // while the kernel before this one finishes.
      const int first = static_cast<int>(std::min<int64_t>(kStages, end - begin));
      for (int i = 0; i < first; ++i) {
        int kk, tn, tm;
        coords(begin + i, kk, tn, tm);
        mbar_arrive_expect_tx(full_bar + 8 * i, stage_tx);
        tma_load_2d(smem + i * kStageBytes, &tm_w, kk * kBK, tn * kBM, full_bar + 8 * i);
      }
      pdl_wait();  // x is the previous kernel's output
      for (int i = 0; i < first; ++i) {
        int kk, tn, tm;
        coords(begin + i, kk, tn, tm);
        tma_load_2d(smem + i * kStageBytes + kWBytes, &tm_x, kk * kBK, tm * kBN, full_bar + 8 * i);
      }
      uint32_t n_it = first;
      for (int64_t it = begin + first; it < end; ++it, ++n_it) {
        int kk, tn, tm;
        coords(it, kk, tn, tm);
        const uint32_t s = n_it % kStages;
        mbar_wait(empty_bar + 8 * s, ((n_it / kStages) & 1) ^ 1);
        const uint32_t stage = smem + s * kStageBytes;
        mbar_arrive_expect_tx(full_bar + 8 * s, stage_tx);
        tma_load_2d(stage, &tm_w, kk * kBK, tn * kBM, full_bar + 8 * s);
        tma_load_2d(stage + kWBytes, &tm_x, kk * kBK, tm * kBN, full_bar + 8 * s);
      }
    }
    return;
  }

  pdl_wait();  // y, the partials and the flags are written; the earlier kernels are done with them
  const int ctid = threadIdx.x - 128, cw = ctid / 128, warp = (ctid % 128) / 32, lane = ctid % 32;
  const bool wg_leader = (ctid % 128) == 0;
  float acc[kAcc];
  uint32_t n_it = 0;
  for (int64_t it = begin; it < end;) {
    const int64_t t = it / kt;
    const int k0 = static_cast<int>(it - t * kt);
    const int nk = static_cast<int>(std::min<int64_t>(kt - k0, end - it));
#pragma unroll
    for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
    for (int i = 0; i < nk; ++i, ++n_it) {
      const uint32_t s = n_it % kStages;
      mbar_wait(full_bar + 8 * s, (n_it / kStages) & 1);
      const uint32_t a = smem + s * kStageBytes + cw * 64 * 128, b = smem + s * kStageBytes + kWBytes;
      reg_fence(acc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk)
        wgmma_m64n256(acc, smem_desc(a + 32 * kk, 16, 1024), smem_desc(b + 32 * kk, 16, 1024));
      wgmma_commit();
      wgmma_wait<1>();
      reg_fence(acc);
      if (i > 0 && wg_leader) mbar_arrive(empty_bar + 8 * ((n_it - 1) % kStages));
    }
    wgmma_wait<0>();
    reg_fence(acc);
    if (wg_leader) mbar_arrive(empty_bar + 8 * ((n_it - 1) % kStages));
    it += nk;

    if (k0 > 0) {  // the tile's tail or middle: hand the partial to the block holding the head
      float4* const mine = reinterpret_cast<float4*>(partials + c * kPartialFloats);
#pragma unroll
      for (int j = 0; j < kAcc / 4; ++j)
        __stcg(mine + j * kConsumers + ctid,
               make_float4(acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3]));
      __threadfence();
      consumer_sync();
      if (ctid == 0) st_release(flags + c, 1);
      continue;
    }
    if (nk < kt) {  // the tile's head
      const int64_t tile_end = (t + 1) * kt;
      int parts = 0;
      while (c + 1 + parts < blocks && range_begin(c + 1 + parts, total, blocks) < tile_end) ++parts;
      add_partials(acc, smem, c, parts, ctid, partials, flags);
    }
    const int tn = static_cast<int>(t % tiles_n), tm = static_cast<int>(t / tiles_n);
    const int g = lane / 4, tq = lane % 4;
    const bool even = (g & 1) == 0;
    const int row = tn * kBM + cw * 64 + warp * 16 + (even ? g : g + 7);
    const int col0 = tm * kBN + 2 * tq;
#pragma unroll
    for (int j = 0; j < kAcc / 4; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float v0 = acc[4 * j + e], v1 = acc[4 * j + 2 + e];
        const float recv = __shfl_xor_sync(0xffffffffu, even ? v1 : v0, 4);
        const int col = col0 + 8 * j + e;
        if (col < m && row < n)
          store_pair(y + static_cast<int64_t>(col) * n + row, even ? v0 : recv, even ? recv : v1);
      }
    }
  }
#else
  TROUPE_SM90_UNAVAILABLE_BODY();
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    TROUPE_CUDA_CHECK(
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
    TROUPE_KERNEL_REQUIRE(q == cudaDriverEntryPointSuccess && p != nullptr,
                          "gemm (sm90): the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A [rows, k] bf16 row-major tensor read in (box_rows x 64) boxes with the 128-byte swizzle.
CUtensorMap tensor_map(const bf16* base, int64_t rows, int64_t k, int box_rows) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k) * 2};
  const cuuint32_t box[2] = {kBK, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r =
      encode_fn()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16*>(base), dims, strides, box,
                  elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TROUPE_KERNEL_REQUIRE(r == CUDA_SUCCESS, "gemm (sm90): cuTensorMapEncodeTiled failed ("
                                               << static_cast<int>(r) << ") for rows " << rows << ", k "
                                               << k);
  return map;
}

}  // namespace

bool gemm_sm90_available() {
  static const bool available =
      sm90::sm90_image_present(reinterpret_cast<const void*>(gemm_sm90_kernel<bf16>));
  return available;
}

bool gemm_sm90_supports(const void* x, const void* w, const void* y, int64_t m, int64_t n, int64_t k) {
  const auto aligned = [](const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; };
  // Bounds leave room for a tile past the last row in the kernel's int row and column indices.
  constexpr int64_t kMax = (int64_t{1} << 31) - 512;
  return m > 0 && n > 0 && k > 0 && k % 8 == 0 && n % 8 == 0 && m < kMax && n < kMax && k < kMax &&
         aligned(x, 16) && aligned(w, 16) && aligned(y, 8);
}

size_t gemm_sm90_partials_offset() { return kFlagBytes; }

size_t gemm_sm90_workspace_bytes(int ctas) {
  TROUPE_KERNEL_REQUIRE(ctas > 0 && ctas <= kMaxBlocks,
                        "gemm (sm90): " << ctas << " blocks (1.." << kMaxBlocks << ")");
  return kFlagBytes + static_cast<size_t>(ctas) * kPartialFloats * sizeof(float);
}

void gemm_sm90_xwt(const bf16* x, const bf16* w, void* y, bool f32_out, int64_t m, int64_t n, int64_t k,
                   void* workspace, int ctas, cudaStream_t stream) {
  TROUPE_KERNEL_REQUIRE(gemm_sm90_available(),
                        "gemm (sm90): needs a compute capability 9.0 device and an sm_90a build");
  TROUPE_KERNEL_REQUIRE(gemm_sm90_supports(x, w, y, m, n, k),
                        "gemm (sm90): unsupported shape or alignment m=" << m << " n=" << n << " k=" << k);
  TROUPE_KERNEL_REQUIRE(ctas > 0 && ctas <= kMaxBlocks && workspace != nullptr,
                        "gemm (sm90): no workspace or " << ctas << " blocks (1.." << kMaxBlocks << ")");
  set_max_dynamic_smem(gemm_sm90_kernel<bf16>, static_cast<int>(kSmemBytes));
  set_max_dynamic_smem(gemm_sm90_kernel<float>, static_cast<int>(kSmemBytes));
  const int64_t total = ((n + kBM - 1) / kBM) * ((m + kBN - 1) / kBN) * ((k + kBK - 1) / kBK);
  const int blocks = static_cast<int>(std::min<int64_t>(ctas, total));
  const int x_box = static_cast<int>((std::min<int64_t>(kBN, m) + 7) / 8 * 8);
  const CUtensorMap tm_w = tensor_map(w, n, k, kBM), tm_x = tensor_map(x, m, k, x_box);
  // Flags first, at a place that does not depend on the grid: a grid of other size must not find its flags
  // in what an earlier call left as partials (a test that mixed grid sizes caught exactly that).
  int* flags = static_cast<int*>(workspace);
  float* partials = reinterpret_cast<float*>(static_cast<char*>(workspace) + kFlagBytes);
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  if (f32_out) {
    launch_pdl(gemm_sm90_kernel<float>, dim3(blocks), dim3(kThreads), kSmemBytes, stream, tm_w, tm_x,
               static_cast<float*>(y), mi, ni, ki, x_box, partials, flags);
  } else {
    launch_pdl(gemm_sm90_kernel<bf16>, dim3(blocks), dim3(kThreads), kSmemBytes, stream, tm_w, tm_x,
               static_cast<bf16*>(y), mi, ni, ki, x_box, partials, flags);
  }
}

}  // namespace troupe::kernels::cuda::detail
