// Flash-decoding with per-warp pipelines: the decode kernel of the flash plugin (up to 16 packed query
// rows per (sequence, kv head): one decode token of a GQA group of <= 16 heads, or a short run).
//
// Decode is bound by reading K and V once. The tile-per-block kernel (flash_attention.cu, kKeySplit) stages
// one 64-key tile for all four warps and meets at two block barriers per tile, so a slow load stalls every
// warp. Here each warp owns whole 16-key tiles (tiles warp, warp + 4, ... of the block's key range) in a
// private cp.async ring of kStages tiles: it waits only for its own copies (wait_group + __syncwarp) and
// keeps kStages - 1 tiles in flight. The four warps' (m, l, O) merge through shared memory once at the end;
// splits of the key range over blocks merge through detail::merge_splits as before.
// S = Q K^T and O += P V run on m16n8k16 MMAs (the 16 query rows are the m dimension), softmax online in the
// log2 domain, shared-memory tiles XOR-swizzled in 16-byte chunks (ldmatrix without bank conflicts).
// Programmatic dependent launch: the block table and the first tiles of keys older than this step are
// requested before pdl_wait(), so they load while the kernel before finishes. With attention_params::rope
// the kernel also does rope_write_kv's work for its heads (the decode graph then skips that launch).
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/decode_tile.cuh"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/rope.cuh"

namespace troupe::kernels::cuda {

using namespace detail;
using bf16 = __nv_bfloat16;

namespace {

constexpr int kWarps = 4;
constexpr int kKeys = kDecodeTileKeys;  // keys per warp tile (16)
constexpr int kTableCache = 1024;       // block ids staged in shared memory (16384 keys at block size 16)

template <int D, int kStages, int kW = kWarps>
struct warp_decode_cfg {
  static constexpr int kTileElems = kKeys * D;  // one K or V tile
  static constexpr int kRingElems = kStages * 2 * kTileElems;
  static constexpr int kSmemBytes = (16 * D + kW * kRingElems) * 2;
  static_assert(kW * 16 * (D + 2) * 4 <= kSmemBytes, "merge scratch must fit");
};

// kW warps a block: 4, or 2 where that fits the grid in one wave and 4 would not (launch_stages).
template <int D, int kStages, int kW>
__global__ void __launch_bounds__(kW * 32)
    flash_decode_warp_kernel(attention_params p, int num_splits, int block_shift, bool early_trigger) {
  if (early_trigger) pdl_trigger();  // a grid smaller than the GPU (pdl_trigger_early)
  using C = warp_decode_cfg<D, kStages, kW>;
  constexpr int kChunks = D / 8;
  // Before pdl_wait() (while the kernel before this one finishes): only the step's inputs, uploaded before
  // the step's first kernel, and the K/V of positions before this step's tokens, written by earlier steps:
  // the block table is staged and this warp's first tiles of old keys are in flight when the wait returns.
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ int32_t s_table[kTableCache];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  bf16* sq = reinterpret_cast<bf16*>(smem_raw);     // [16, D]
  bf16* ring = sq + 16 * D + warp * C::kRingElems;  // [kStages][K tile, V tile], this warp's
  const int seq = blockIdx.y / num_splits, split = blockIdx.y % num_splits;
  const int kv_head = blockIdx.x;
  const int group = p.num_heads / p.num_kv_heads;
  const int q0 = p.query_start[seq];
  const int q_len = p.query_start[seq + 1] - q0;
  const int rows_total = q_len * group;  // <= 16 (checked by the launcher through max_q_len)
  const int ctx = p.context_lens[seq];
  const int pos_base = ctx - q_len;
  const int window = p.sliding_window;
  const int t_first = window > 0 ? max(0, pos_base - window + 1) / kKeys : 0;
  const int t_last = (ctx + kKeys - 1) / kKeys;
  const int per_split = (t_last - t_first + num_splits - 1) / num_splits;
  const int t_begin = t_first + split * per_split;
  const int t_end = min(t_last, t_begin + per_split);
  const int64_t out_rows = static_cast<int64_t>(p.num_tokens) * p.num_heads;
  const split_views parts = split_layout(p.workspace, out_rows, D, num_splits);
  const bool fused_rope = p.rope.positions != nullptr;  // the launcher allows it with q_len == 1 only
  // The new K/V (fused rope) are written by the one block whose keys include the last position (never an
  // empty split).
  const bool writes_new_kv = fused_rope && t_begin <= t_last - 1 && t_last - 1 < t_end;
  if (q_len <= 0) return;
  if (t_begin >= t_end) {  // an empty split still tells the merge it saw nothing
    if (num_splits > 1) {
      pdl_wait();
      for (int r = tid; r < rows_total; r += blockDim.x) {
        const int64_t orow = static_cast<int64_t>(q0 + r / group) * p.num_heads + kv_head * group + r % group;
        parts.part_lse[split * out_rows + orow] = -INFINITY;
      }
    }
    return;
  }
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const int blk_first = (t_begin * kKeys) / p.block_size;
  const int n_blk = (min(t_end * kKeys, ctx) - 1) / p.block_size - blk_first + 1;
  const bool table_cached = n_blk <= kTableCache;
  if (table_cached) {
    for (int i = tid; i < n_blk; i += blockDim.x) s_table[i] = table[blk_first + i];
  }
  const int64_t q_stride = p.q_stride > 0 ? p.q_stride : static_cast<int64_t>(p.num_heads) * D;
  __syncthreads();  // s_table

  // One warp tile: 16 keys of K and of V, 2 * 16 * kChunks 16-byte copies spread over the lanes.
  auto load_tile = [&](int t, bf16* dst) {
#pragma unroll
    for (int c = lane; c < kKeys * kChunks; c += 32) {
      const int r = c / kChunks, ch = c % kChunks, j = t * kKeys + r;
      const bool valid = j < ctx;  // rows past the context are zero-filled: P (=0) * V must not be NaN
      int64_t off = 0;
      if (valid) {
        const int blk = block_shift >= 0 ? j >> block_shift : j / p.block_size;
        const int in_blk = block_shift >= 0 ? j & (p.block_size - 1) : j % p.block_size;
        const int32_t id = table_cached ? s_table[blk - blk_first] : table[blk];
        off = ((static_cast<int64_t>(id) * p.block_size + in_blk) * p.num_kv_heads + kv_head) * D + ch * 8;
      }
      cp_async16(dst + swz<D>(r, ch), p.k_cache + off, valid);
      cp_async16(dst + C::kTileElems + swz<D>(r, ch), p.v_cache + off, valid);
    }
  };
  // Prologue: this warp's first kStages - 1 tiles, one commit group each (possibly empty). Tiles of old
  // keys only go before the wait; the first tile holding a position of this step waits for it.
  int st0 = 0;
  for (; st0 < kStages - 1; ++st0) {
    const int t = t_begin + warp + kW * st0;
    if (t < t_end && t * kKeys + kKeys - 1 >= pos_base) break;
    if (t < t_end) load_tile(t, ring + st0 * 2 * C::kTileElems);
    cp_async_commit();
  }
  pdl_wait();

  if (fused_rope) {
    // Rotate this group's query heads into sq (rows past rows_total zero), and, in the block that owns the
    // last position, the new key into the cache with its value: rope_write_kv's work for these heads.
    using RL = rope_lanes<D>;
    const int tok = q0;  // q_len == 1
    const bf16* row = p.q + static_cast<int64_t>(tok) * q_stride;
    const float pos = static_cast<float>(p.rope.positions[tok]);
    const float* inv_freq = p.rope.inv_freq + tok * p.rope.inv_freq_stride;
    const int32_t slot = writes_new_kv ? p.rope.slot_mapping[tok] : -1;
    const int64_t cache_off = (static_cast<int64_t>(slot) * p.num_kv_heads + kv_head) * D;
    const int i0 = lane < RL::kLanesUsed ? lane * RL::kPairs : 0;
    for (int item = warp; item < 18; item += kW) {
      if (item < 16) {
        if (item < rows_total) {
          bf16 ra[RL::kPairs], rb[RL::kPairs];
          rope_rotate_head<D>(row + (kv_head * group + item) * D, p.rope.q_norm_w, p.rope.norm_eps, pos,
                              inv_freq, lane, ra, rb);
          if (lane < RL::kLanesUsed) {
#pragma unroll
            for (int j = 0; j < RL::kPairs; ++j) {
              const int e = i0 + j, f = RL::kHalf + i0 + j;
              sq[swz<D>(item, e / 8) + e % 8] = ra[j];
              sq[swz<D>(item, f / 8) + f % 8] = rb[j];
            }
          }
        } else {
          for (int c = lane; c < kChunks; c += 32) *reinterpret_cast<uint4*>(sq + swz<D>(item, c)) = uint4{};
        }
      } else if (slot >= 0) {
        if (item == 16) {  // the new key, rotated (and normed) as rope_write_kv stores it
          bf16 ra[RL::kPairs], rb[RL::kPairs];
          rope_rotate_head<D>(row + (p.num_heads + kv_head) * D, p.rope.k_norm_w, p.rope.norm_eps, pos,
                              inv_freq, lane, ra, rb);
          if (lane < RL::kLanesUsed) {
#pragma unroll
            for (int j = 0; j < RL::kPairs; ++j) {
              p.rope.k_cache[cache_off + i0 + j] = ra[j];
              p.rope.k_cache[cache_off + RL::kHalf + i0 + j] = rb[j];
            }
          }
        } else {  // the new value, unchanged
          const bf16* v = row + (p.num_heads + p.num_kv_heads + kv_head) * D;
          for (int c = lane; c < kChunks; c += 32)
            *reinterpret_cast<uint4*>(p.rope.v_cache + cache_off + c * 8) =
                *reinterpret_cast<const uint4*>(v + c * 8);
        }
      }
    }
    __threadfence_block();  // the new K/V row is read back below through cp.async by another warp
  } else {
    for (int c = tid; c < 16 * kChunks; c += blockDim.x) {
      const int r = c / kChunks, ch = c % kChunks;
      uint4 val{};
      if (r < rows_total) {
        const int64_t off =
            static_cast<int64_t>(q0 + r / group) * q_stride + (kv_head * group + r % group) * D + ch * 8;
        val = *reinterpret_cast<const uint4*>(p.q + off);
      }
      *reinterpret_cast<uint4*>(sq + swz<D>(r, ch)) = val;
    }
  }
  __syncthreads();  // sq, and the new K/V row
  for (int st = st0; st < kStages - 1; ++st) {
    const int t = t_begin + warp + kW * st;
    if (t < t_end) load_tile(t, ring + st * 2 * C::kTileElems);
    cp_async_commit();
  }

  const float scale_log2 = p.scale * 1.4426950408889634f;
  const int g = lane / 4, tq = lane % 4;
  const uint32_t sq_u32 = static_cast<uint32_t>(__cvta_generic_to_shared(sq));
  const uint32_t ring_u32 = static_cast<uint32_t>(__cvta_generic_to_shared(ring));
  const decode_tile_offsets off = decode_offsets<D>(lane);
  int row_pos[2];  // positions of this thread's rows g and g + 8; -1 = padding
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = g + 8 * h;
    row_pos[h] = r < rows_total ? pos_base + r / group : -1;
  }
  const int min_pos = pos_base;
  float o[D / 8][4];
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dn][e] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int i = 0, t = t_begin + warp; t < t_end; ++i, t += kW) {
    const int stage = i % kStages;
    cp_async_wait<kStages - 2>();  // tile i landed for this lane ...
    __syncwarp();                  // ... and every lane; all are done with tile i - 1's stage
    {
      const int tn = t + kW * (kStages - 1);
      if (tn < t_end) load_tile(tn, ring + ((i + kStages - 1) % kStages) * 2 * C::kTileElems);
      cp_async_commit();
    }
    const uint32_t k_stage = ring_u32 + stage * 2 * C::kTileElems * 2;
    const uint32_t v_stage = k_stage + C::kTileElems * 2;

    decode_tile<D>(sq_u32, k_stage, v_stage, off, t, min_pos, ctx, window, row_pos, scale_log2, tq, m, l, o);
  }

  pdl_trigger();
  // Row sums over the quad, then the four warps' (m, l, O) merge through shared memory (the rings are
  // free once every copy has landed) and warp 0 writes the result.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
  cp_async_wait<0>();
  __syncthreads();
  float* scratch_o = reinterpret_cast<float*>(smem_raw);  // [kW, 16, D]
  float* scratch_ml = scratch_o + kW * 16 * D;            // [kW, 16, 2]
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = g + 8 * h;
    float* dst = scratch_o + (warp * 16 + r) * D + 2 * tq;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn)
      *reinterpret_cast<float2*>(dst + dn * 8) = make_float2(o[dn][2 * h], o[dn][2 * h + 1]);
    if (tq == 0) {
      scratch_ml[(warp * 16 + r) * 2] = m[h];
      scratch_ml[(warp * 16 + r) * 2 + 1] = l[h];
    }
  }
  __syncthreads();
  // All threads finish the merge: thread tid owns row tid / kPerRow and the columns (tid % kPerRow) + kPerRow
  // c.
  constexpr int kPerRow = kW * 32 / 16;
  const int r = tid / kPerRow, c0 = tid % kPerRow;
  if (r >= rows_total) return;
  float mx = -INFINITY;
#pragma unroll
  for (int w = 0; w < kW; ++w) mx = fmaxf(mx, scratch_ml[(w * 16 + r) * 2]);
  const float m_use = mx == -INFINITY ? 0.0f : mx;
  float wt[kW], sum = 0.0f;
#pragma unroll
  for (int w = 0; w < kW; ++w) {
    wt[w] = fast_exp2(scratch_ml[(w * 16 + r) * 2] - m_use);
    sum += wt[w] * scratch_ml[(w * 16 + r) * 2 + 1];
  }
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  const int64_t orow = static_cast<int64_t>(q0 + r / group) * p.num_heads + kv_head * group + r % group;
  for (int c = c0; c < D; c += kPerRow) {
    float acc = 0.0f;
#pragma unroll
    for (int w = 0; w < kW; ++w) acc += wt[w] * scratch_o[(w * 16 + r) * D + c];
    if (num_splits == 1) {
      p.out[orow * D + c] = __float2bfloat16(acc * inv);
    } else {
      parts.part_o[(split * out_rows + orow) * D + c] = acc * inv;
    }
  }
  if (num_splits > 1 && c0 == 0)
    parts.part_lse[split * out_rows + orow] = sum > 0.0f ? mx + log2f(sum) : -INFINITY;
}

// Blocks of this configuration one SM holds (the first device's count: the GPUs of a process are alike).
template <int D, int kStages, int kW>
int blocks_per_sm() {
  using C = warp_decode_cfg<D, kStages, kW>;
  static const int n = [] {
    auto kernel = flash_decode_warp_kernel<D, kStages, kW>;
    set_max_dynamic_smem(kernel, C::kSmemBytes);
    int per_sm = 0;
    TROUPE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kW * 32, C::kSmemBytes));
    return std::max(1, per_sm);
  }();
  return n;
}

template <int D, int kStages, int kW = kWarps>
void launch(const attention_params& p, int num_splits, cudaStream_t stream) {
  using C = warp_decode_cfg<D, kStages, kW>;
  auto kernel = flash_decode_warp_kernel<D, kStages, kW>;
  set_max_dynamic_smem(kernel, C::kSmemBytes);
  const int block_shift = (p.block_size & (p.block_size - 1)) == 0 ? __builtin_ctz(p.block_size) : -1;
  const dim3 grid(p.num_kv_heads, p.num_seqs * num_splits);
  const bool early = pdl_trigger_early(static_cast<int64_t>(grid.x) * grid.y);
  launch_pdl(kernel, grid, dim3(kW * 32), C::kSmemBytes, stream, p, num_splits, block_shift, early);
}

// Ring depth per head dim: 3 tiles (2 in flight per warp) while two blocks still fit an SM, 2 at 256. A grid
// smaller than the GPU (batch 1 to ~16) gets kDeepStages instead: one block per SM costs nothing there, and
// with 4 tiles in flight per warp a context up to 256 keys is requested at once, before pdl_wait().
template <int D>
constexpr int kWarpStages = D >= 256 ? 2 : 3;
template <int D>
constexpr int kDeepStages = D >= 256 ? 2 : 5;

// TROUPE_DECODE_STAGES=2|3|5 forces a ring depth where the head dim allows it (benchmarks); 0 = choose.
// TROUPE_DECODE_WARPS=2|4 forces the warps a block (benchmarks); 0 = choose.
int forced_warps() {
  static const int v = [] {
    const char* e = std::getenv("TROUPE_DECODE_WARPS");
    const int n = e != nullptr ? std::atoi(e) : 0;
    return n == 2 || n == 4 ? n : 0;
  }();
  return v;
}

int forced_stages() {
  static const int v = [] {
    const char* e = std::getenv("TROUPE_DECODE_STAGES");
    const int n = e != nullptr ? std::atoi(e) : 0;
    return n == 2 || n == 3 || n == 5 ? n : 0;
  }();
  return v;
}

template <int D>
void launch_stages(const attention_params& p, int num_splits, int sms, cudaStream_t stream) {
  const int64_t blocks = static_cast<int64_t>(p.num_kv_heads) * p.num_seqs * num_splits;
  // Large grids of short key ranges (batch 256 at ~520 keys): each block streams for a few microseconds,
  // so its prologue and merge are a large share; a 2-tile ring fits three blocks per SM instead of two,
  // and one block's ends overlap the others' streaming (H200: 19.1k vs 18.0k tokens/s at batch 256).
  const int keys_per_block = (p.max_context_len + num_splits - 1) / num_splits;
  int stages = blocks < sms ? kDeepStages<D> : (keys_per_block <= 1024 ? 2 : kWarpStages<D>);
  if (forced_stages() != 0 && (D < 256 || forced_stages() == 2)) stages = forced_stages();
  // Two warps a block where that fits the grid in one wave and four warps would not (batch 64 at 512-4096
  // keys: 512 blocks; H200 B64 ctx4096 3.65 vs 3.55 TB/s, engine batch 64 9.74k vs 9.16k tokens/s): no
  // second wave, and each block streams twice the keys for the same fixed cost. Grids of many waves (batch
  // 256) measured slower with two (2.97 vs 3.21 TB/s), and small grids need every warp they can get.
  int warps = kWarps;
  if (stages == 3) {
    constexpr int S3 = kWarpStages<D> == 3 ? 3 : 2;
    if (blocks > int64_t{sms} * blocks_per_sm<D, S3, 4>() &&
        blocks <= int64_t{sms} * blocks_per_sm<D, S3, 2>())
      warps = 2;
  } else if (stages == 2) {
    if (blocks > int64_t{sms} * blocks_per_sm<D, 2, 4>() && blocks <= int64_t{sms} * blocks_per_sm<D, 2, 2>())
      warps = 2;
  }
  if (forced_warps() != 0 && stages != 5) warps = forced_warps();
  if (stages == 5) {
    launch<D, kDeepStages<D> == 5 ? 5 : 2>(p, num_splits, stream);
  } else if (warps == 2) {
    if (stages == 3) {
      launch<D, kWarpStages<D> == 3 ? 3 : 2, 2>(p, num_splits, stream);
    } else {
      launch<D, 2, 2>(p, num_splits, stream);
    }
  } else if (stages == 3) {
    launch<D, kWarpStages<D> == 3 ? 3 : 2>(p, num_splits, stream);
  } else {
    launch<D, 2>(p, num_splits, stream);
  }
}

}  // namespace

namespace detail {

int flash_decode_warp_resident_blocks(int sms) {
  return blocks_per_sm<128, kWarpStages<128>, kWarps>() * sms;
}

int flash_decode_warp_tile_keys() { return kKeys * kWarps; }

void flash_decode_warp(const attention_params& p, int num_splits, int sms, cudaStream_t stream) {
  TROUPE_DISPATCH_HEAD_DIM(p.head_dim, [&] { launch_stages<kHeadDim>(p, num_splits, sms, stream); });
}

}  // namespace detail
}  // namespace troupe::kernels::cuda
