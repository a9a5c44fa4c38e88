// Pieces shared by the attention kernels: PTX wrappers and the split-K merge.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernels/cuda/attention.h"

namespace troupe::kernels::cuda::detail {

// 16-byte global -> shared copy that bypasses L1; with valid == false it writes zeros (src-size 0).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
// The same with an L2 cache policy (l2_evict_first_policy: for data read once, as a decode step's K/V).
__device__ __forceinline__ void cp_async16_hint(void* smem, const void* gmem, bool valid, uint64_t policy) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(s), "l"(gmem),
               "r"(src_bytes), "l"(policy));
}
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// ldmatrix at a register base plus a compile-time byte offset. The offset is an immediate in the instruction,
// so the compiler cannot hoist one address register per (k step, n tile) out of the main loop, which is
// what blew the flash kernels up to 209+ registers when addresses were computed in C++.
template <int kImm>
__device__ __forceinline__ void ldmatrix_x4_at(uint32_t (&r)[4], uint32_t base) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4+%5];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(base), "n"(kImm));
}
template <int kImm>
__device__ __forceinline__ void ldmatrix_x4_trans_at(uint32_t (&r)[4], uint32_t base) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4+%5];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(base), "n"(kImm));
}

// Calls f(std::integral_constant<int, I>{}) for I in [0, N): loop indices usable as template arguments.
template <typename F, int... I>
__device__ __forceinline__ void static_for_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
__device__ __forceinline__ void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

// d += a * b, bf16 operands, fp32 accumulators (m16n8k16).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Element offset of (row, 16-byte chunk) in a swizzled [rows, D] bf16 tile: 16-byte chunks XOR-permuted by
// row so ldmatrix reads are free of bank conflicts. Rows of fewer than 8 chunks (head_dim 32) swizzle
// within their 4 chunks.
template <int D>
constexpr int kSwizzleMask = (D / 8 < 8 ? D / 8 : 8) - 1;
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & kSwizzleMask<D>)) << 3);
}

// 2^x; inputs here are <= 0 or -inf, where the approximate unit is exact enough (rel. error ~2^-22).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Split-K workspace layout: part_o [num_splits, num_tokens * num_heads, head_dim] (normalized by its own
// sum), then part_lse [num_splits, num_tokens * num_heads] (log2 of the sum of exp2 of scaled scores; -inf
// for a split that saw no key).
struct split_views {
  float* part_o;    // [num_splits, rows, head_dim]
  float* part_lse;  // [num_splits, rows]
};
__host__ __device__ inline split_views split_layout(float* workspace, int64_t rows, int64_t head_dim,
                                                    int num_splits) {
  return split_views{workspace, workspace + static_cast<int64_t>(num_splits) * rows * head_dim};
}
inline int64_t split_floats(int64_t rows, int64_t head_dim, int num_splits) {
  return static_cast<int64_t>(num_splits) * rows * (head_dim + 1);
}

// The per-warp-pipelined decode kernel (flash_decode.cu): up to 16 packed query rows per (sequence, kv
// head), num_splits key splits whose partials the caller merges. Resident blocks on `sms` SMs (head_dim
// 128 instance).
int flash_decode_warp_resident_blocks(int sms);
void flash_decode_warp(const attention_params& p, int num_splits, int sms, cudaStream_t stream);

// The persistent, balanced decode kernel (flash_decode_persistent.cu): head dims 64 and 128, block sizes
// that are multiples of 16, up to 16 packed query rows. Launches it and returns true where it applies: by
// default for grids of more than two (sequence, kv head) pairs an SM, always with force (or
// TROUPE_DECODE_PERSISTENT=1), never with TROUPE_DECODE_PERSISTENT=0 unless forced. Its workspace need:
// flash_decode_persistent_workspace_floats.
bool flash_decode_persistent(const attention_params& p, bool force, int sms, cudaStream_t stream);
size_t flash_decode_persistent_workspace_floats(int head_dim, int sms);

// out[row] = sum_s 2^(lse_s - max) * part_o[s, row] / sum_s 2^(lse_s - max)
void merge_splits(split_views parts, __nv_bfloat16* out, int64_t rows, int head_dim, int num_splits,
                  cudaStream_t stream);

}  // namespace troupe::kernels::cuda::detail
