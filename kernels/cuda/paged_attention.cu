// PagedAttention-style decode on CUDA cores. A block of 4 warps owns one (sequence, kv head, partition of
// kPagedPartition keys) and every query head of the kv group, so each K/V row is read from device memory
// once per group. A key row is D / 8 lanes wide (16 bytes each); a warp reads 32 / (D / 8) rows per step and
// kUnroll steps ahead so enough loads are in flight to stream at memory bandwidth. Scores go to shared
// memory, the softmax is exact within the partition, and partitions merge through their log-sum-exps.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/check.h"

namespace troupe::kernels::cuda {

using namespace detail;

namespace {

constexpr int kPagedWarps = 4;

__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// Sums kG values, each spread over kL lanes, with kG - 1 + log2(kL / kG) shuffles instead of kG * log2(kL):
// at each halving step a lane keeps one half of its values and sends the other to its partner. On return
// the lane holds the full sum of group g_out; kL / kG lanes hold each group.
template <int kG, int kL>
__device__ __forceinline__ float transpose_reduce(float (&v)[kG], int li, int& g_out) {
  static_assert(kG <= kL, "more groups than lanes");
  int g = 0;
  int offset = kL / 2;
#pragma unroll
  for (int n = kG; n > 1; n /= 2) {
    const bool upper = (li & offset) != 0;
#pragma unroll
    for (int i = 0; i < n / 2; ++i) {
      const float keep = upper ? v[i + n / 2] : v[i];
      const float send = upper ? v[i] : v[i + n / 2];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, offset);
    }
    if (upper) g += n / 2;
    offset /= 2;
  }
  float r = v[0];
#pragma unroll
  for (; offset > 0; offset /= 2) r += __shfl_xor_sync(0xffffffffu, r, offset);
  g_out = g;
  return r;
}

template <int D, int kGroup>
__global__ void __launch_bounds__(kPagedWarps * 32)
    paged_decode_kernel(attention_params p, int num_parts, int block_shift) {
  constexpr int kLanes = D / 8;              // lanes covering one key row
  constexpr int kRowsPerStep = 32 / kLanes;  // key rows a warp reads per step
  constexpr int kUnroll = 4;  // 16-byte loads in flight per lane (8 cost registers and occupancy: slower)
  constexpr int kStride = kPagedWarps * kRowsPerStep * kUnroll;
  __shared__ float s_p[kGroup][kPagedPartition];  // scores, then probabilities (log2 domain)
  __shared__ float s_acc[kGroup][D];
  __shared__ float s_max[kGroup], s_sum[kGroup];

  // kv heads vary fastest over the grid: the blocks running together read neighbouring 256-byte slices of
  // the same cache rows, which keeps DRAM pages open.
  const int kv_head = blockIdx.x, part = blockIdx.y, seq = blockIdx.z;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int sub = lane / kLanes, li = lane % kLanes;
  const int ctx = p.context_lens[seq];
  const int token = p.query_start[seq];
  const int64_t rows = static_cast<int64_t>(p.num_tokens) * p.num_heads;
  const int64_t orow0 = static_cast<int64_t>(token) * p.num_heads + kv_head * kGroup;
  const split_views parts = split_layout(p.workspace, rows, D, num_parts);
  const int first = p.sliding_window > 0 ? max(0, ctx - p.sliding_window) : 0;
  const int start = max(part * kPagedPartition, first);
  const int end = min(ctx, (part + 1) * kPagedPartition);
  if (start >= end) {
    if (num_parts > 1 && tid < kGroup) parts.part_lse[part * rows + orow0 + tid] = -INFINITY;
    return;
  }
  const int base = part * kPagedPartition;
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const int64_t kv_stride = static_cast<int64_t>(p.num_kv_heads) * D;

  float q[kGroup][8];
  const float scale_log2 = p.scale * 1.4426950408889634f;
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    const int64_t q_stride = p.q_stride > 0 ? p.q_stride : static_cast<int64_t>(p.num_heads) * D;
    unpack8(*reinterpret_cast<const uint4*>(p.q + token * q_stride + (kv_head * kGroup + g) * D + li * 8),
            q[g]);
#pragma unroll
    for (int e = 0; e < 8; ++e) q[g][e] *= scale_log2;
  }
  for (int i = tid; i < kGroup * D; i += blockDim.x) (&s_acc[0][0])[i] = 0.0f;

  auto offset = [&](int j) {
    const int blk = block_shift >= 0 ? j >> block_shift : j / p.block_size;
    const int in_blk = block_shift >= 0 ? j & (p.block_size - 1) : j % p.block_size;
    const int64_t slot = static_cast<int64_t>(table[blk]) * p.block_size + in_blk;
    return slot * kv_stride + kv_head * D + li * 8;
  };

  for (int j0 = start + warp * kRowsPerStep * kUnroll; j0 < end; j0 += kStride) {
    uint4 kv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * kRowsPerStep + sub;
      kv[u] = j < end ? __ldg(reinterpret_cast<const uint4*>(p.k_cache + offset(j))) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * kRowsPerStep + sub;
      float k[8];
      unpack8(kv[u], k);
      float d[kGroup];
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        d[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) d[g] += q[g][e] * k[e];
      }
      int g_sum;
      const float sum = transpose_reduce<kGroup, kLanes>(d, li, g_sum);
      if ((li & (kLanes / kGroup - 1)) == 0 && j < end) s_p[g_sum][j - base] = sum;
    }
  }
  __syncthreads();

  for (int g = warp; g < kGroup; g += kPagedWarps) {
    float mx = -INFINITY;
    for (int j = start + lane; j < end; j += 32) mx = fmaxf(mx, s_p[g][j - base]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
    for (int j = start + lane; j < end; j += 32) {
      const float e = exp2f(s_p[g][j - base] - mx);
      s_p[g][j - base] = e;
      sum += e;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) {
      s_max[g] = mx;
      s_sum[g] = sum;
    }
  }
  __syncthreads();

  float acc[kGroup][8];
#pragma unroll
  for (int g = 0; g < kGroup; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
  for (int j0 = start + warp * kRowsPerStep * kUnroll; j0 < end; j0 += kStride) {
    uint4 vv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * kRowsPerStep + sub;
      vv[u] = j < end ? __ldg(reinterpret_cast<const uint4*>(p.v_cache + offset(j))) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * kRowsPerStep + sub;
      if (j >= end) continue;
      float v[8];
      unpack8(vv[u], v);
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const float pg = s_p[g][j - base];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] += pg * v[e];
      }
    }
  }
#pragma unroll
  for (int g = 0; g < kGroup; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float a = acc[g][e];
#pragma unroll
      for (int o = kLanes; o < 32; o <<= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
      if (sub == 0) atomicAdd(&s_acc[g][li * 8 + e], a);
    }
  __syncthreads();

  for (int i = tid; i < kGroup * D; i += blockDim.x) {
    const int g = i / D, d = i % D;
    const float val = s_acc[g][d] / s_sum[g];
    if (num_parts == 1) {
      p.out[(orow0 + g) * D + d] = __float2bfloat16(val);
    } else {
      parts.part_o[(part * rows + orow0 + g) * D + d] = val;
      if (d == 0) parts.part_lse[part * rows + orow0 + g] = s_max[g] + log2f(s_sum[g]);
    }
  }
}

}  // namespace

void paged_attention_decode(const attention_params& p, cudaStream_t stream) {
  TROUPE_KERNEL_REQUIRE(
      p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0,
      "num_heads " << p.num_heads << " is not a multiple of num_kv_heads " << p.num_kv_heads);
  TROUPE_KERNEL_REQUIRE(p.max_q_len <= 1,
                        "paged_attention_decode takes one query per sequence, got max_q_len " << p.max_q_len);
  if (p.num_tokens == 0) return;
  const int group = p.num_heads / p.num_kv_heads;
  const int num_parts = std::max(1, (p.max_context_len + kPagedPartition - 1) / kPagedPartition);
  const int64_t rows = static_cast<int64_t>(p.num_tokens) * p.num_heads;
  TROUPE_KERNEL_REQUIRE(
      num_parts == 1 || static_cast<size_t>(split_floats(rows, p.head_dim, num_parts)) <= p.workspace_floats,
      "paged_attention_decode needs " << split_floats(rows, p.head_dim, num_parts)
                                      << " workspace floats, has " << p.workspace_floats);
  const dim3 grid(p.num_kv_heads, num_parts, p.num_seqs);
  const int block_shift = (p.block_size & (p.block_size - 1)) == 0 ? __builtin_ctz(p.block_size) : -1;
  TROUPE_DISPATCH_HEAD_DIM(p.head_dim, [&] {
    auto launch = [&](auto group_tag) {
      constexpr int kGroup = decltype(group_tag)::value;
      if constexpr (kGroup <= kHeadDim / 8) {  // the shuffle reduction spreads groups over a row's lanes
        paged_decode_kernel<kHeadDim, kGroup>
            <<<grid, kPagedWarps * 32, 0, stream>>>(p, num_parts, block_shift);
        TROUPE_CUDA_CHECK_LAUNCH();
      } else {
        TROUPE_KERNEL_REQUIRE(false,
                              "paged attention: group " << kGroup << " needs head_dim >= " << 8 * kGroup);
      }
    };
    switch (group) {
      case 1:
        launch(std::integral_constant<int, 1>{});
        break;
      case 2:
        launch(std::integral_constant<int, 2>{});
        break;
      case 4:
        launch(std::integral_constant<int, 4>{});
        break;
      case 8:
        launch(std::integral_constant<int, 8>{});
        break;
      default:
        TROUPE_KERNEL_REQUIRE(false,
                              "paged attention: query heads per kv head " << group << " not in {1,2,4,8}");
    }
    if (num_parts > 1) {
      merge_splits(split_layout(p.workspace, rows, kHeadDim, num_parts), p.out, rows, kHeadDim, num_parts,
                   stream);
    }
  });
}

}  // namespace troupe::kernels::cuda
