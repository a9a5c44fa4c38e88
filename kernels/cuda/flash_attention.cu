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
#include "kernels/cuda/flash_prefill_sm90.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/pdl.h"

namespace troupe::kernels::cuda {

using namespace detail;
using bf16 = __nv_bfloat16;

namespace {

// kKeySplit = false (prefill): warps split the rows of the tile, each warp sees every key.
// kKeySplit = true (decode): all warps share one 16 * kMTiles row tile and split each key tile kWarps ways;
// their (m, l, O) merge through shared memory at the end. Few rows, many keys: this keeps 4 warps busy
// per block where a row split would leave one.
// kStages: K/V tiles in the cp.async ring (kStages - 1 in flight while one is computed). Three stages
// measured slower than two for decode on an H200 (fewer blocks fit an SM); kept selectable for the bench.
template <int D, int kWarps, int kMTiles, bool kKeySplit, int kStages = 2>
struct flash_cfg {
  static constexpr int kRowsPerWarp = 16 * kMTiles;
  static constexpr int kBr = kKeySplit ? kRowsPerWarp : kWarps * kRowsPerWarp;
  static constexpr int kBc = 64;
  static constexpr int kKeysPerWarp = kKeySplit ? kBc / kWarps : kBc;  // keys of a tile one warp handles
  static constexpr int kNT = kKeysPerWarp / 8;                         // n8 tiles of S per warp
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr int kSmemBytes = (kBr * D + 2 * kStages * kBc * D) * 2;
  static_assert(kStages >= 2, "the ring needs a tile in flight while one is computed");
  static_assert(!kKeySplit || kKeysPerWarp % 16 == 0, "a warp's key slice must be whole k16 steps");
  static_assert(!kKeySplit || kWarps * kBr * (D + 2) * 4 <= kSmemBytes, "merge scratch must fit");
};

constexpr int kTableCache = 256;  // block ids a decode block stages in shared memory (4096 keys at 16)

template <int D, int kWarps, int kMTiles, bool kKeySplit, int kStages>
__global__ void __launch_bounds__(kWarps * 32, kWarps == 8 && D <= 128 ? 2 : 1)
    flash_attention_kernel(attention_params p, int num_splits, int block_shift) {
  using C = flash_cfg<D, kWarps, kMTiles, kKeySplit, kStages>;
  constexpr int kBr = C::kBr, kBc = C::kBc, kChunks = C::kChunks, kNT = C::kNT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sq = reinterpret_cast<bf16*>(smem_raw);  // [kBr, D]
  bf16* sk = sq + kBr * D;                       // [kStages, kBc, D]
  bf16* sv = sk + kStages * kBc * D;             // [kStages, kBc, D]

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  // Causal tiles late in a sequence do the most work: start them first so the tail of the grid is short.
  // Prefill runs a 1-D grid ordered by row tile from the last, then sequence, then kv head, so the heaviest
  // tiles of every head and sequence go first (with (row tile, head, sequence) as x, y, z, the hardware
  // launched every tile of head 0 before any of head 1, and heavy tiles of the last heads ran at the end).
  int seq, split, kv_head, tile_from_last;
  if constexpr (kKeySplit) {
    seq = blockIdx.z / num_splits;
    split = blockIdx.z % num_splits;
    kv_head = blockIdx.y;
    tile_from_last = blockIdx.x;
  } else {
    const int rest = blockIdx.x / p.num_kv_heads;
    kv_head = blockIdx.x % p.num_kv_heads;
    seq = rest % p.num_seqs;
    split = 0;
    tile_from_last = rest / p.num_seqs;
  }
  const int row_tiles = kKeySplit ? gridDim.x : gridDim.x / (p.num_kv_heads * p.num_seqs);
  const int group = p.num_heads / p.num_kv_heads;
  const int q0 = p.query_start[seq];
  const int q_len = p.query_start[seq + 1] - q0;
  const int rows_total = q_len * group;
  const int row0 = (row_tiles - 1 - tile_from_last) * kBr;
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
        const int64_t orow =
            static_cast<int64_t>(q0 + gr / group) * p.num_heads + kv_head * group + gr % group;
        parts.part_lse[split * out_rows + orow] = -INFINITY;
      }
    }
    return;
  }
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  // Decode: this split's block ids go to shared memory first, so issuing a tile's copies never waits on a
  // block-table read (one dependent global load per row otherwise sits in front of every tile's cp.async).
  __shared__ int32_t s_table[kKeySplit ? kTableCache : 1];
  const int blk_first = (kt_begin * kBc) / p.block_size;
  const int n_blk = (min(kt_end * kBc, ctx) - 1) / p.block_size - blk_first + 1;
  const bool table_cached = kKeySplit && n_blk <= kTableCache;
  if (table_cached) {
    for (int i = tid; i < n_blk; i += C::kThreads) s_table[i] = table[blk_first + i];
    __syncthreads();
  }
  const int64_t q_stride = p.q_stride > 0 ? p.q_stride : static_cast<int64_t>(p.num_heads) * D;

  for (int c = tid; c < kBr * kChunks; c += C::kThreads) {
    const int r = c / kChunks, ch = c % kChunks, gr = row0 + r;
    const bool valid = gr < rows_total;
    const int64_t off =
        valid ? static_cast<int64_t>(q0 + gr / group) * q_stride + (kv_head * group + gr % group) * D + ch * 8
              : 0;
    cp_async16(sq + swz<D>(r, ch), p.q + off, valid);
  }
  // One cp.async group per K or V tile, so S = Q K^T can start while V is still in flight.
  auto load_tile = [&](const bf16* cache, bf16* dst, int kt) {
    for (int c = tid; c < kBc * kChunks; c += C::kThreads) {
      const int r = c / kChunks, ch = c % kChunks, j = kt * kBc + r;
      const bool valid = j < ctx;  // rows past the context are zero-filled: P (=0) * V must not be NaN
      int64_t off = 0;
      if (valid) {
        // Power-of-two block sizes (the usual case) avoid an integer division per row.
        const int blk = block_shift >= 0 ? j >> block_shift : j / p.block_size;
        const int in_blk = block_shift >= 0 ? j & (p.block_size - 1) : j % p.block_size;
        const int32_t id = table_cached ? s_table[blk - blk_first] : table[blk];
        const int64_t slot = static_cast<int64_t>(id) * p.block_size + in_blk;
        off = (slot * p.num_kv_heads + kv_head) * D + ch * 8;
      }
      cp_async16(dst + swz<D>(r, ch), cache + off, valid);
    }
  };
  // Prologue: tiles kt_begin .. kt_begin + kStages - 2 in flight (two groups each, possibly empty, so the
  // wait counts below hold at the end of the range too).
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (kt_begin + st < kt_end) load_tile(p.k_cache, sk + st * kBc * D, kt_begin + st);
    cp_async_commit();
    if (kt_begin + st < kt_end) load_tile(p.v_cache, sv + st * kBc * D, kt_begin + st);
    cp_async_commit();
  }

  const float scale_log2 = p.scale * 1.4426950408889634f;
  const int g = lane / 4, t = lane % 4;
  const int row_base = kKeySplit ? 0 : warp * C::kRowsPerWarp;  // this warp's first row in the tile
  const int key_base = kKeySplit ? warp * C::kKeysPerWarp : 0;  // this warp's first key in a key tile
  // Byte offsets of this lane's ldmatrix row for each of the 4 chunk phases (k step mod 4). Every row an
  // ldmatrix lane addresses is lane % 8 modulo 8, so the swizzle term is (chunk ^ (lane & 7)) within a group
  // of 8 chunks and the rest of the address is a compile-time immediate.
  const uint32_t sq_u32 = static_cast<uint32_t>(__cvta_generic_to_shared(sq));
  const uint32_t sk_u32 = static_cast<uint32_t>(__cvta_generic_to_shared(sk));
  const uint32_t sv_u32 = static_cast<uint32_t>(__cvta_generic_to_shared(sv));
  uint32_t q_off[4], k_off[4], v_off[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int x = lane & kSwizzleMask<D>;
    q_off[c] = (row_base + lane % 16) * D * 2 + (((c * 2 + lane / 16) ^ x) << 4);
    k_off[c] = (key_base + (lane / 16) * 8 + lane % 8) * D * 2 + (((c * 2 + (lane / 8) % 2) ^ x) << 4);
    v_off[c] = (key_base + ((lane / 8) % 2) * 8 + lane % 8) * D * 2 + (((c * 2 + lane / 16) ^ x) << 4);
  }
  int row_pos[kMTiles][2];  // positions of this thread's rows g and g + 8 of each m tile; -1 = padding
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int gr = row0 + row_base + mt * 16 + g + 8 * h;
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
    const int stage = (kt - kt_begin) % kStages;
    cp_async_wait<2 * (kStages - 2) + 1>();  // K[kt] landed (V[kt] and later tiles may be in flight)
    __syncthreads();  // ... for every thread; and all are done with tile kt - 1, whose stage is refilled
    {
      const int nxt = kt + kStages - 1, nstage = (stage + kStages - 1) % kStages;
      if (nxt < kt_end) load_tile(p.k_cache, sk + nstage * kBc * D, nxt);
      cp_async_commit();
      if (nxt < kt_end) load_tile(p.v_cache, sv + nstage * kBc * D, nxt);
      cp_async_commit();
    }

    float s[kMTiles][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
    const uint32_t k_stage = sk_u32 + stage * kBc * D * 2, v_stage = sv_u32 + stage * kBc * D * 2;
    static_for<D / 16>([&](auto ks_c) {
      constexpr int ks = decltype(ks_c)::value;
      constexpr int kChunkImm = (ks / 4) * 128;  // the swizzle only permutes chunks within groups of 8
      uint32_t qa[kMTiles][4];
      static_for<kMTiles>([&](auto mt_c) {
        constexpr int mt = decltype(mt_c)::value;
        ldmatrix_x4_at<mt * 16 * D * 2 + kChunkImm>(qa[mt], sq_u32 + q_off[ks % 4]);
      });
      static_for<kNT / 2>([&](auto np_c) {
        constexpr int np = decltype(np_c)::value;
        uint32_t kb[4];
        ldmatrix_x4_at<np * 16 * D * 2 + kChunkImm>(kb, k_stage + k_off[ks % 4]);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_bf16(s[mt][2 * np], qa[mt], kb[0], kb[1]);
          mma_bf16(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      });
    });

    // Masks only where a tile crosses the diagonal, the context end or the window start.
    const bool need_mask = (kt + 1) * kBc - 1 > min_pos || (window > 0 && kt * kBc <= max_pos - window);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int pos = row_pos[mt][h];
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& v = s[mt][nt][2 * h + e];
            if (need_mask) {
              const int key = kt * kBc + key_base + nt * 8 + 2 * t + e;
              if (key > pos || (window > 0 && key <= pos - window)) v = -INFINITY;
            }
            mx = fmaxf(mx, v);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[mt][h], mx * scale_log2);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet stays all-zero
        const float corr = fast_exp2(m[mt][h] - m_use);
        m[mt][h] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& v = s[mt][nt][2 * h + e];
            v = fast_exp2(v * scale_log2 - m_use);
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

    cp_async_wait<2 * (kStages - 1)>();  // V[kt] landed (the groups of later tiles may be in flight)
    __syncthreads();
    static_for<kNT / 2>([&](auto kk_c) {
      constexpr int kk = decltype(kk_c)::value;
      uint32_t pa[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
      static_for<D / 16>([&](auto dp_c) {
        constexpr int dp = decltype(dp_c)::value;
        uint32_t vb[4];
        ldmatrix_x4_trans_at<kk * 16 * D * 2 + (dp / 4) * 128>(vb, v_stage + v_off[dp % 4]);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_bf16(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
          mma_bf16(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
        }
      });
    });
  }

  // Row sums over the quad; with a key split, merge the warps' partial (m, l, O) through shared memory
  // (the K/V stages are free now) so warp 0 holds the block's result.
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l[mt][h] += __shfl_xor_sync(0xffffffffu, l[mt][h], 1);
      l[mt][h] += __shfl_xor_sync(0xffffffffu, l[mt][h], 2);
    }
  if constexpr (kKeySplit) {
    cp_async_wait<0>();
    __syncthreads();
    float* scratch_o = reinterpret_cast<float*>(smem_raw);  // [kWarps, kBr, D]
    float* scratch_ml = scratch_o + kWarps * kBr * D;       // [kWarps, kBr, 2]
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = mt * 16 + g + 8 * h;
        float* dst = scratch_o + (warp * kBr + r) * D + 2 * t;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn)
          *reinterpret_cast<float2*>(dst + dn * 8) = make_float2(o[mt][dn][2 * h], o[mt][dn][2 * h + 1]);
        if (t == 0) {
          scratch_ml[(warp * kBr + r) * 2] = m[mt][h];
          scratch_ml[(warp * kBr + r) * 2 + 1] = l[mt][h];
        }
      }
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = mt * 16 + g + 8 * h;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, scratch_ml[(w * kBr + r) * 2]);
        const float m_use = mx == -INFINITY ? 0.0f : mx;
        float wt[kWarps], sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          wt[w] = fast_exp2(scratch_ml[(w * kBr + r) * 2] - m_use);
          sum += wt[w] * scratch_ml[(w * kBr + r) * 2 + 1];
        }
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float acc = 0.0f;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) acc += wt[w] * scratch_o[(w * kBr + r) * D + dn * 8 + 2 * t + e];
            o[mt][dn][2 * h + e] = acc;
          }
        m[mt][h] = mx;
        l[mt][h] = sum;
      }
  }

#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int gr = row0 + row_base + mt * 16 + g + 8 * h;
      const float sum = l[mt][h];
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
          *reinterpret_cast<float2*>(dst + dn * 8) =
              make_float2(o[mt][dn][2 * h] * inv, o[mt][dn][2 * h + 1] * inv);
        if (t == 0) parts.part_lse[split * out_rows + orow] = sum > 0.0f ? m[mt][h] + log2f(sum) : -INFINITY;
      }
    }
  }
}

__global__ void merge_splits_kernel(split_views parts, bf16* out, int64_t rows, int head_dim,
                                    int num_splits) {
  pdl_wait();
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

template <int D, int kWarps, int kMTiles, bool kKeySplit, int kStages = 2>
void launch_flash(const attention_params& p, int num_splits, cudaStream_t stream) {
  using C = flash_cfg<D, kWarps, kMTiles, kKeySplit, kStages>;
  auto kernel = flash_attention_kernel<D, kWarps, kMTiles, kKeySplit, kStages>;
  set_max_dynamic_smem(kernel, C::kSmemBytes);
  const int group = p.num_heads / p.num_kv_heads;
  const int64_t row_tiles = (static_cast<int64_t>(p.max_q_len) * group + C::kBr - 1) / C::kBr;
  const int block_shift = (p.block_size & (p.block_size - 1)) == 0 ? __builtin_ctz(p.block_size) : -1;
  const dim3 grid = kKeySplit
                        ? dim3(static_cast<unsigned>(row_tiles), p.num_kv_heads, p.num_seqs * num_splits)
                        : dim3(static_cast<unsigned>(row_tiles * p.num_kv_heads * p.num_seqs));
  TROUPE_KERNEL_REQUIRE(kKeySplit || row_tiles * p.num_kv_heads * p.num_seqs < (int64_t{1} << 31),
                        "flash prefill: grid too large");
  kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(p, num_splits, block_shift);
  TROUPE_CUDA_CHECK_LAUNCH();
}

void check_params(const attention_params& p) {
  TROUPE_KERNEL_REQUIRE(
      p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0,
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
void merge_splits(split_views parts, bf16* out, int64_t rows, int head_dim, int num_splits,
                  cudaStream_t stream) {
  if (rows == 0) return;
  launch_pdl(merge_splits_kernel, dim3(static_cast<unsigned>(rows)), dim3(std::min(head_dim, 256)), 0, stream,
             parts, out, rows, head_dim, num_splits);
}
}  // namespace detail

size_t attention_workspace_floats(int32_t num_tokens, int32_t num_heads, int32_t head_dim,
                                  int32_t max_context_len) {
  const int paged_parts = (max_context_len + kPagedPartition - 1) / kPagedPartition;
  const int splits = std::max(paged_parts, std::min(kFlashMaxSplits, (max_context_len + 63) / 64));
  return std::max(
      static_cast<size_t>(split_floats(static_cast<int64_t>(num_tokens) * num_heads, head_dim, splits)),
      detail::flash_decode_persistent_workspace_floats(head_dim, sm_count()));
}

bool flash_prefill_wgmma_available() { return flash_prefill_sm90_available(); }

void flash_attention_prefill(const attention_params& p, cudaStream_t stream, int warps_per_block,
                             flash_prefill_kernel kernel) {
  check_params(p);
  TROUPE_KERNEL_REQUIRE(warps_per_block == 0 || warps_per_block == 4 || warps_per_block == 8,
                        "flash prefill: warps_per_block " << warps_per_block << " not in {0, 4, 8}");
  if (kernel == flash_prefill_kernel::wgmma_sm90 ||
      (kernel == flash_prefill_kernel::automatic && warps_per_block == 0 && p.head_dim == 128 &&
       flash_prefill_sm90_available())) {
    flash_prefill_sm90(p, stream);  // checks head_dim and the device itself when forced
    return;
  }
  if (p.num_tokens == 0) return;
  TROUPE_DISPATCH_HEAD_DIM(p.head_dim, [&] {
    // 8 warps x 16 rows measured fastest at head_dim 128 (v2: 208 vs 182 TFLOP/s); at 256 its fp32 O
    // needs the whole register file, so the default there is 4 warps x 16 rows.
    if (warps_per_block == 8 || (warps_per_block == 0 && kHeadDim != 256)) {
      launch_flash<kHeadDim, 8, 1, false>(p, 1, stream);
    } else if constexpr (kHeadDim == 256) {
      launch_flash<kHeadDim, 4, 1, false>(p, 1, stream);
    } else {
      launch_flash<kHeadDim, 4, 2, false>(p, 1, stream);
    }
  });
}

namespace {

// Blocks of the block-tile decode kernel resident on the whole GPU (head_dim 128 instance; the others
// differ little for the split choice).
template <int kStages>
int decode_resident_blocks() {
  using C = flash_cfg<128, 4, 1, true, kStages>;
  static const int resident = [] {
    int per_sm = 0;
    auto kernel = flash_attention_kernel<128, 4, 1, true, kStages>;
    set_max_dynamic_smem(kernel, C::kSmemBytes);
    TROUPE_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, C::kThreads, C::kSmemBytes));
    return std::max(1, per_sm) * sm_count();
  }();
  return resident;
}

// Key splits per (sequence, kv head): the count whose grid fills its last wave best (a 1.5-wave grid idles
// a quarter of the GPU), less a small charge per split for the partial outputs and the merge. A split keeps
// at least two 64-key tiles when the grid is large (a block's first tile is latency it cannot hide), down
// to one when the grid is small (batch 1, where latency is all there is).
int choose_decode_splits(int64_t blocks, int tiles, int resident) {
  if (tiles <= 4) return 1;  // <= 256 keys: splitting saves less than the merge launch costs
  const int min_tiles = blocks >= resident ? 2 : 1;
  const int max_splits = std::max(1, std::min(kFlashMaxSplits, tiles / min_tiles));
  double best = -1e30;
  int splits = 1;
  for (int sp = 1; sp <= max_splits; ++sp) {
    const double waves = static_cast<double>(blocks * sp) / resident;
    const double score = waves / std::ceil(waves) - 0.01 * sp;
    if (score > best + 1e-9) {
      best = score;
      splits = sp;
    }
  }
  return splits;
}

// Clamps a split count to the key tiles and to what the workspace holds.
int fit_splits(const attention_params& p, int num_splits, int tiles) {
  num_splits = std::max(1, std::min({num_splits, tiles, kFlashMaxSplits}));
  const int64_t rows = static_cast<int64_t>(p.num_tokens) * p.num_heads;
  while (num_splits > 1 &&
         static_cast<size_t>(split_floats(rows, p.head_dim, num_splits)) > p.workspace_floats) {
    --num_splits;
  }
  return num_splits;
}

void merge_if_split(const attention_params& p, int num_splits, cudaStream_t stream) {
  if (num_splits <= 1) return;
  const int64_t rows = static_cast<int64_t>(p.num_tokens) * p.num_heads;
  merge_splits(split_layout(p.workspace, rows, p.head_dim, num_splits), p.out, rows, p.head_dim, num_splits,
               stream);
}

template <int kStages>
void decode_block_tiles(const attention_params& p, int num_splits, cudaStream_t stream) {
  const int tiles = std::max(1, (p.max_context_len + 63) / 64);
  if (num_splits <= 0) {
    num_splits = choose_decode_splits(static_cast<int64_t>(p.num_seqs) * p.num_kv_heads, tiles,
                                      decode_resident_blocks<kStages>());
  }
  num_splits = fit_splits(p, num_splits, tiles);
  TROUPE_DISPATCH_HEAD_DIM(p.head_dim,
                           [&] { launch_flash<kHeadDim, 4, 1, true, kStages>(p, num_splits, stream); });
  merge_if_split(p, num_splits, stream);
}

void decode_warp_tiles(const attention_params& p, int num_splits, cudaStream_t stream) {
  const int tiles = std::max(1, (p.max_context_len + 63) / 64);  // 64 keys: one 16-key tile per warp
  if (num_splits <= 0) {
    num_splits = choose_decode_splits(static_cast<int64_t>(p.num_seqs) * p.num_kv_heads, tiles,
                                      flash_decode_warp_resident_blocks(sm_count()));
  }
  num_splits = fit_splits(p, num_splits, tiles);
  flash_decode_warp(p, num_splits, sm_count(), stream);
  merge_if_split(p, num_splits, stream);
}

}  // namespace

namespace {

// attention_params::rope where the kernel that runs cannot apply it: rope_write_kv first, then the
// attention on the rotated rows with the rope off.
attention_params rope_unfused(const attention_params& p, cudaStream_t stream) {
  rope_write_kv_params rp{};
  rp.qkv = p.rope.qkv;
  rp.positions = p.rope.positions;
  rp.inv_freq = p.rope.inv_freq;
  rp.inv_freq_stride = p.rope.inv_freq_stride;
  rp.slot_mapping = p.rope.slot_mapping;
  rp.k_cache = p.rope.k_cache;
  rp.v_cache = p.rope.v_cache;
  rp.q_norm_w = p.rope.q_norm_w;
  rp.k_norm_w = p.rope.k_norm_w;
  rp.norm_eps = p.rope.norm_eps;
  rp.rows = p.num_tokens;
  rp.num_heads = p.num_heads;
  rp.num_kv_heads = p.num_kv_heads;
  rp.head_dim = p.head_dim;
  TROUPE_KERNEL_REQUIRE(rp.qkv == p.q && p.q_stride == (p.num_heads + 2 * p.num_kv_heads) * p.head_dim,
                        "attention rope: q must be the merged q/k/v rows");
  rope_write_kv(rp, stream);
  attention_params q = p;
  q.rope = attention_rope{};
  return q;
}

}  // namespace

void flash_attention_decode(const attention_params& p_in, cudaStream_t stream, int num_splits,
                            flash_decode_kernel kernel, int stages) {
  check_params(p_in);
  attention_params p = p_in;
  if (p.rope.positions != nullptr) {
    TROUPE_KERNEL_REQUIRE(p.rope.qkv == p.q && p.rope.k_cache == p.k_cache && p.rope.v_cache == p.v_cache &&
                              p.rope.slot_mapping != nullptr && p.rope.inv_freq != nullptr,
                          "attention rope: incomplete");
    const int g = p.num_heads / p.num_kv_heads;
    const bool fusable = p.max_q_len == 1 && g <= 16 && kernel != flash_decode_kernel::block_tiles;
    if (!fusable) p = rope_unfused(p, stream);
  }
  TROUPE_KERNEL_REQUIRE(stages == 0 || stages == 2 || stages == 3,
                        "flash decode: stages " << stages << " not in {0, 2, 3}");
  if (p.num_tokens == 0) return;
  const int group = p.num_heads / p.num_kv_heads;
  const bool fits_warp_tiles = static_cast<int64_t>(p.max_q_len) * group <= 16;
  TROUPE_KERNEL_REQUIRE(
      kernel != flash_decode_kernel::warp_tiles || fits_warp_tiles,
      "flash decode (warp tiles): max_q_len " << p.max_q_len << " x group " << group << " > 16 rows");
  if (kernel == flash_decode_kernel::persistent) {
    TROUPE_KERNEL_REQUIRE(
        detail::flash_decode_persistent(p, true, sm_count(), stream),
        "flash decode (persistent): needs head_dim 64 or 128, a block size that is a multiple "
        "of 16, <= 16 packed rows and its workspace (head_dim "
            << p.head_dim << ", block_size " << p.block_size << ")");
  } else if (kernel != flash_decode_kernel::block_tiles && fits_warp_tiles) {
    if (kernel == flash_decode_kernel::automatic &&
        detail::flash_decode_persistent(p, false, sm_count(), stream))
      return;
    decode_warp_tiles(p, num_splits, stream);
  } else if (stages == 3) {
    decode_block_tiles<3>(p, num_splits, stream);
  } else {
    decode_block_tiles<2>(p, num_splits, stream);
  }
}

void flash_attention(const attention_params& p, cudaStream_t stream) {
  const int group = p.num_kv_heads > 0 ? p.num_heads / p.num_kv_heads : 1;
  if (static_cast<int64_t>(p.max_q_len) * group <= 16) {
    flash_attention_decode(p, stream);
  } else if (p.rope.positions != nullptr) {
    flash_attention_prefill(rope_unfused(p, stream), stream);
  } else {
    flash_attention_prefill(p, stream);
  }
}

}  // namespace troupe::kernels::cuda
