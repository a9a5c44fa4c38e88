// FlashAttention-2-style attention over the paged KV cache with mma.sync bf16 tensor cores.
//
// A block owns kBr packed query rows of one (sequence, kv head): row r is token r / group, query head
// kv_head * group + r % group, so a K/V tile staged in shared memory serves the whole GQA group. Each warp
// owns 16 * kMTiles rows; S = Q K^T and O += P V run on m16n8k16 MMAs, P stays in registers (the m16n8
// accumulator layout is the m16k16 A-operand layout), and the softmax is online in the log2 domain. K/V
// tiles of kBc keys are gathered through the block table with cp.async, double-buffered. Shared memory rows
// are XOR-swizzled in 16-byte chunks so ldmatrix reads are free of bank conflicts.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/check.h"

namespace troupe::kernels::cuda {

using namespace detail;
using bf16 = __nv_bfloat16;

namespace {

template <int D, int kWarps, int kMTiles>
struct flash_cfg {
  static constexpr int kRowsPerWarp = 16 * kMTiles;
  static constexpr int kBr = kWarps * kRowsPerWarp;
  static constexpr int kBc = 64;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr int kSmemBytes = (kBr * D + 4 * kBc * D) * 2;
};

// Element offset of (row, 16-byte chunk) in a swizzled [rows, D] bf16 tile.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

template <int D, int kWarps, int kMTiles>
__global__ void __launch_bounds__(kWarps * 32) flash_attention_kernel(attention_params p, int num_splits) {
  using C = flash_cfg<D, kWarps, kMTiles>;
  constexpr int kBr = C::kBr, kBc = C::kBc, kChunks = C::kChunks;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sq = reinterpret_cast<bf16*>(smem_raw);  // [kBr, D]
  bf16* sk = sq + kBr * D;                       // [2, kBc, D]
  bf16* sv = sk + 2 * kBc * D;                   // [2, kBc, D]

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int seq = blockIdx.z / num_splits, split = blockIdx.z % num_splits;
  const int kv_head = blockIdx.y;
  const int group = p.num_heads / p.num_kv_heads;
  const int q0 = p.query_start[seq];
  const int q_len = p.query_start[seq + 1] - q0;
  const int rows_total = q_len * group;
  // Causal tiles late in a sequence do the most work: start them first so the tail of the grid is short.
  const int row0 = (gridDim.x - 1 - blockIdx.x) * kBr;
  if (row0 >= rows_total) return;
  const int ctx = p.context_lens[seq];
  const int pos_base = ctx - q_len;  // position of query row 0
  const int min_pos = pos_base + row0 / group;
  const int max_pos = pos_base + (min(row0 + kBr, rows_total) - 1) / group;
  const int window = p.sliding_window;
  const int kt_first = window > 0 ? max(0, min_pos - window + 1) / kBc : 0;
  const int kt_last = max_pos / kBc + 1;
  const int per_split = (kt_last - kt_first + num_splits - 1) / num_splits;
  const int kt_begin = kt_first + split * per_split;
  const int kt_end = min(kt_last, kt_begin + per_split);
  const int64_t out_rows = static_cast<int64_t>(p.num_tokens) * p.num_heads;
  const split_views parts = split_layout(p.workspace, out_rows, D, num_splits);
  if (kt_begin >= kt_end) {  // an empty split still tells the merge it saw nothing
    if (num_splits > 1) {
      for (int r = tid; r < min(kBr, rows_total - row0); r += blockDim.x) {
        const int gr = row0 + r;
        const int64_t orow = static_cast<int64_t>(q0 + gr / group) * p.num_heads + kv_head * group + gr % group;
        parts.part_lse[split * out_rows + orow] = -INFINITY;
      }
    }
    return;
  }
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;

  for (int c = tid; c < kBr * kChunks; c += C::kThreads) {
    const int r = c / kChunks, ch = c % kChunks, gr = row0 + r;
    const bool valid = gr < rows_total;
    const int64_t off =
        valid ? (static_cast<int64_t>(q0 + gr / group) * p.num_heads + kv_head * group + gr % group) * D + ch * 8 : 0;
    cp_async16(sq + swz<D>(r, ch), p.q + off, valid);
  }
  auto load_kv = [&](int kt, int stage) {
    for (int c = tid; c < kBc * kChunks; c += C::kThreads) {
      const int r = c / kChunks, ch = c % kChunks, j = kt * kBc + r;
      const bool valid = j < ctx;  // rows past the context are zero-filled: P (=0) * V must not be NaN
      int64_t off = 0;
      if (valid) {
        const int64_t slot = static_cast<int64_t>(table[j / p.block_size]) * p.block_size + j % p.block_size;
        off = (slot * p.num_kv_heads + kv_head) * D + ch * 8;
      }
      cp_async16(sk + stage * kBc * D + swz<D>(r, ch), p.k_cache + off, valid);
      cp_async16(sv + stage * kBc * D + swz<D>(r, ch), p.v_cache + off, valid);
    }
  };
  load_kv(kt_begin, 0);
  cp_async_commit();

  const float scale_log2 = p.scale * 1.4426950408889634f;
  const int g = lane / 4, t = lane % 4;
  int row_pos[kMTiles][2];  // positions of this thread's rows g and g + 8 of each m tile; -1 = padding
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int gr = row0 + warp * C::kRowsPerWarp + mt * 16 + g + 8 * h;
      row_pos[mt][h] = gr < rows_total ? pos_base + gr / group : -1;
    }
  float o[kMTiles][D / 8][4];
  float m[kMTiles][2], l[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][dn][e] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }

  for (int kt = kt_begin; kt < kt_end; ++kt) {
    const int stage = (kt - kt_begin) & 1;
    cp_async_wait<0>();
    __syncthreads();  // tile kt is visible to all; everyone is done with the other stage
    if (kt + 1 < kt_end) load_kv(kt + 1, stage ^ 1);
    cp_async_commit();

    const bf16* skt = sk + stage * kBc * D;
    const bf16* svt = sv + stage * kBc * D;
    float s[kMTiles][kBc / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kBc / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t qa[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
        ldmatrix_x4(qa[mt], sq + swz<D>(warp * C::kRowsPerWarp + mt * 16 + lane % 16, ks * 2 + lane / 16));
#pragma unroll
      for (int np = 0; np < kBc / 16; ++np) {
        uint32_t kb[4];
        ldmatrix_x4(kb, skt + swz<D>(np * 16 + (lane / 16) * 8 + lane % 8, ks * 2 + (lane / 8) % 2));
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_bf16(s[mt][2 * np], qa[mt], kb[0], kb[1]);
          mma_bf16(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    // Masks only where a tile crosses the diagonal, the context end or the window start.
    const bool need_mask = (kt + 1) * kBc - 1 > min_pos || (window > 0 && kt * kBc <= max_pos - window);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int pos = row_pos[mt][h];
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kBc / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& v = s[mt][nt][2 * h + e];
            if (need_mask) {
              const int key = kt * kBc + nt * 8 + 2 * t + e;
              if (key > pos || (window > 0 && key <= pos - window)) v = -INFINITY;
            }
            mx = fmaxf(mx, v);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[mt][h], mx * scale_log2);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet stays all-zero
        const float corr = exp2f(m[mt][h] - m_use);
        m[mt][h] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kBc / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& v = s[mt][nt][2 * h + e];
            v = exp2f(v * scale_log2 - m_use);
            sum += v;
          }
        l[mt][h] = l[mt][h] * corr + sum;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) {
          o[mt][dn][2 * h] *= corr;
          o[mt][dn][2 * h + 1] *= corr;
        }
      }
    }

#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t pa[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, svt + swz<D>(kk * 16 + ((lane / 8) % 2) * 8 + lane % 8, dp * 2 + lane / 16));
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_bf16(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
          mma_bf16(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int gr = row0 + warp * C::kRowsPerWarp + mt * 16 + g + 8 * h;
      float sum = l[mt][h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      if (gr >= rows_total) continue;
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      const int64_t orow = static_cast<int64_t>(q0 + gr / group) * p.num_heads + kv_head * group + gr % group;
      if (num_splits == 1) {
        bf16* dst = p.out + orow * D + 2 * t;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn)
          *reinterpret_cast<__nv_bfloat162*>(dst + dn * 8) =
              __floats2bfloat162_rn(o[mt][dn][2 * h] * inv, o[mt][dn][2 * h + 1] * inv);
      } else {
        float* dst = parts.part_o + (split * out_rows + orow) * D + 2 * t;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn)
          *reinterpret_cast<float2*>(dst + dn * 8) = make_float2(o[mt][dn][2 * h] * inv, o[mt][dn][2 * h + 1] * inv);
        if (t == 0) parts.part_lse[split * out_rows + orow] = sum > 0.0f ? m[mt][h] + log2f(sum) : -INFINITY;
      }
    }
  }
}

__global__ void merge_splits_kernel(split_views parts, bf16* out, int64_t rows, int head_dim, int num_splits) {
  const int64_t row = blockIdx.x;
  float mx = -INFINITY;
  for (int s = 0; s < num_splits; ++s) mx = fmaxf(mx, parts.part_lse[s * rows + row]);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.0f, wsum = 0.0f;
    for (int s = 0; s < num_splits; ++s) {
      const float lse = parts.part_lse[s * rows + row];
      if (lse == -INFINITY) continue;  // an empty split wrote no output: skip, never multiply garbage by 0
      const float w = exp2f(lse - mx);
      acc += w * parts.part_o[(s * rows + row) * head_dim + d];
      wsum += w;
    }
    out[row * head_dim + d] = __float2bfloat16(wsum > 0.0f ? acc / wsum : 0.0f);
  }
}

template <int D, int kWarps, int kMTiles>
void launch_flash(const attention_params& p, int num_splits, cudaStream_t stream) {
  using C = flash_cfg<D, kWarps, kMTiles>;
  auto kernel = flash_attention_kernel<D, kWarps, kMTiles>;
  static bool configured = false;  // the attribute is per function; setting it once per process suffices
  if (!configured) {
    TROUPE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
    configured = true;
  }
  const int group = p.num_heads / p.num_kv_heads;
  const int64_t row_tiles = (static_cast<int64_t>(p.max_q_len) * group + C::kBr - 1) / C::kBr;
  const dim3 grid(static_cast<unsigned>(row_tiles), p.num_kv_heads, p.num_seqs * num_splits);
  kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(p, num_splits);
  TROUPE_CUDA_CHECK_LAUNCH();
}

void check_params(const attention_params& p) {
  TROUPE_KERNEL_REQUIRE(p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0,
                        "num_heads " << p.num_heads << " is not a multiple of num_kv_heads " << p.num_kv_heads);
  TROUPE_KERNEL_REQUIRE(p.block_size > 0, "block_size " << p.block_size);
}

int sm_count() {
  static int count = [] {
    int dev = 0, n = 0;
    TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
    TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return count;
}

}  // namespace

namespace detail {
void merge_splits(split_views parts, bf16* out, int64_t rows, int head_dim, int num_splits, cudaStream_t stream) {
  if (rows == 0) return;
  merge_splits_kernel<<<static_cast<unsigned>(rows), std::min(head_dim, 256), 0, stream>>>(parts, out, rows,
                                                                                           head_dim, num_splits);
  TROUPE_CUDA_CHECK_LAUNCH();
}
}  // namespace detail

size_t attention_workspace_floats(int32_t num_tokens, int32_t num_heads, int32_t head_dim, int32_t max_context_len) {
  const int paged_parts = (max_context_len + kPagedPartition - 1) / kPagedPartition;
  const int splits = std::max(paged_parts, std::min(kFlashMaxSplits, (max_context_len + 63) / 64));
  return static_cast<size_t>(split_floats(static_cast<int64_t>(num_tokens) * num_heads, head_dim, splits));
}

void flash_attention_prefill(const attention_params& p, cudaStream_t stream, int warps_per_block) {
  check_params(p);
  TROUPE_KERNEL_REQUIRE(warps_per_block == 0 || warps_per_block == 4 || warps_per_block == 8,
                        "flash prefill: warps_per_block " << warps_per_block << " not in {0, 4, 8}");
  if (p.num_tokens == 0) return;
  TROUPE_DISPATCH_HEAD_DIM(p.head_dim, [&] {
    if (warps_per_block == 8) {
      launch_flash<kHeadDim, 8, 1>(p, 1, stream);
    } else if constexpr (kHeadDim == 256) {
      launch_flash<kHeadDim, 4, 1>(p, 1, stream);  // 64 rows: the fp32 O of 2 m tiles would not fit registers
    } else {
      launch_flash<kHeadDim, 4, 2>(p, 1, stream);
    }
  });
}

void flash_attention_decode(const attention_params& p, cudaStream_t stream, int num_splits) {
  check_params(p);
  if (p.num_tokens == 0) return;
  const int tiles = std::max(1, (p.max_context_len + 63) / 64);
  if (num_splits <= 0) {
    // Enough blocks for ~4 per SM; each split keeps at least 4 key tiles so the merge stays cheap.
    const int64_t blocks = static_cast<int64_t>(p.num_seqs) * p.num_kv_heads;
    num_splits = static_cast<int>(std::min<int64_t>((4 * sm_count() + blocks - 1) / blocks, (tiles + 3) / 4));
  }
  num_splits = std::max(1, std::min({num_splits, tiles, kFlashMaxSplits}));
  const int64_t rows = static_cast<int64_t>(p.num_tokens) * p.num_heads;
  while (num_splits > 1 && static_cast<size_t>(split_floats(rows, p.head_dim, num_splits)) > p.workspace_floats) {
    --num_splits;
  }
  TROUPE_DISPATCH_HEAD_DIM(p.head_dim, [&] {
    launch_flash<kHeadDim, 1, 1>(p, num_splits, stream);
    if (num_splits > 1) {
      merge_splits(split_layout(p.workspace, rows, kHeadDim, num_splits), p.out, rows, kHeadDim, num_splits, stream);
    }
  });
}

void flash_attention(const attention_params& p, cudaStream_t stream) {
  const int group = p.num_kv_heads > 0 ? p.num_heads / p.num_kv_heads : 1;
  if (static_cast<int64_t>(p.max_q_len) * group <= 16) {
    flash_attention_decode(p, stream);
  } else {
    flash_attention_prefill(p, stream);
  }
}

}  // namespace troupe::kernels::cuda
