// Persistent, balanced flash decode: the decode kernel of the flash plugin for grids of many (sequence, kv
// head) pairs (more than two an SM: batch 34 and up at 8 kv heads on 132 SMs), head dims 64 and 128.
//
// The per-pair kernel (flash_decode.cu) gives each pair a block: at batch 256 that is 2048 blocks in 5.2
// waves, each paying a prologue (table, q, RoPE) and a merge in which it streams nothing, and a last wave
// that leaves most of the GPU idle. Here the grid is what the GPU holds at once (one warp a block) and the
// key tiles of all pairs, laid end to end (sequence, kv head, tile), are cut into one equal range a warp.
// Each warp streams its range through a private cp.async ring that runs on across pair boundaries, so the
// next pair's first tiles load while the current one finishes. A pair inside one warp's range is written
// directly; a pair cut between warps leaves a partial (m, l, O) per piece, and the warp that completes the
// pair's last piece (a per-pair arrival counter) merges them, in piece order, so the result does not depend
// on timing.
//
// The per-tile math is flash_decode.cu's (decode_tile.cuh): up to 16 packed query rows (token, head of the
// kv group) as the m dimension of m16n8k16, 16-key tiles, online softmax in the log2 domain. Shared memory
// holds the ring and the current pair's query rows, loaded (and rotated, with the rope) when the warp reaches
// the pair. With attention_params::rope the warp that owns a pair's last tile rotates and writes the new key
// and value itself; that tile's new row is zero-filled by the copy and patched in shared memory from
// registers, so no tile waits for the write.
#include <cuda_bf16.h>

#include <algorithm>
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

constexpr int kKeys = kDecodeTileKeys;   // keys per tile (16)
constexpr int kMaxPairs = 1 << 16;       // (sequence, kv head) pairs the arrival counters cover
constexpr unsigned kArrival = 1u << 20;  // one pair's arrivals add up to this (mod 2^32)

// Per-pair arrival counters, zero when the module loads. The pieces of a pair add kArrival - (n - 1) (the
// first piece) and 1 (each other one), so the counter returns to a multiple of kArrival exactly when the
// last piece arrives, whatever the order, and needs no reset between launches. Launches of this kernel on
// one device must not overlap (the runner's steps are one stream).
__device__ unsigned int g_arrivals[kMaxPairs];

template <int D, int kStages>
struct persistent_cfg {
  static constexpr int kChunks = D / 8;         // 16-byte chunks a row
  static constexpr int kTileElems = kKeys * D;  // one K or V tile
  static constexpr int kSmemBytes = (kStages * 2 * kTileElems + 16 * D) * 2;
};

// Floats of one piece's slot: O [rows_cap, D], then (m, l) [rows_cap, 2]; a multiple of 4 so that every
// slot is 16-byte aligned (the merge reads float4s).
__host__ __device__ __forceinline__ int64_t piece_slot_floats(int rows_cap, int d) {
  return (static_cast<int64_t>(rows_cap) * (d + 2) + 3) / 4 * 4;
}

// A position in the concatenated tiles: sequence s, kv head h, tile t of [tf, tl).
struct cursor {
  int s, h, t, tf, tl;
  int ctx, q0, q_len;
  int pair_start;  // global index of (s, h, tf)
  int32_t blk;     // block id of tile t (read when the cursor moves, used one step later)
};

__device__ __forceinline__ void seq_range(const attention_params& p, int s, int& tf, int& tl, int& ctx,
                                          int& q0, int& q_len) {
  q0 = p.query_start[s];
  q_len = p.query_start[s + 1] - q0;
  ctx = p.context_lens[s];
  const int pos_base = ctx - q_len;
  tf = p.sliding_window > 0 ? max(0, pos_base - p.sliding_window + 1) / kKeys : 0;
  tl = (ctx + kKeys - 1) / kKeys;
  if (q_len <= 0 || ctx <= 0 || tl < tf) tl = tf;  // no queries: no tiles
}

__device__ __forceinline__ int32_t block_of(const attention_params& p, const cursor& c) {
  return __ldg(p.block_tables + static_cast<int64_t>(c.s) * p.max_blocks_per_seq +
               (c.t * kKeys) / p.block_size);
}

// The next tile; a cursor past the last sequence keeps s == num_seqs (the caller never reads it). Only the
// load cursor needs the tile's block id (kBlock); the compute cursor skips the table read.
template <bool kBlock>
__device__ __forceinline__ void advance(const attention_params& p, cursor& c) {
  if (++c.t < c.tl) {
    if (kBlock && (c.t * kKeys) % p.block_size == 0) c.blk = block_of(p, c);
    return;
  }
  c.pair_start += c.tl - c.tf;
  if (++c.h < p.num_kv_heads) {
    c.t = c.tf;
    if (kBlock) c.blk = block_of(p, c);
    return;
  }
  c.h = 0;
  for (++c.s; c.s < p.num_seqs; ++c.s) {
    seq_range(p, c.s, c.tf, c.tl, c.ctx, c.q0, c.q_len);
    if (c.tl > c.tf) break;
  }
  if (c.s >= p.num_seqs) return;
  c.t = c.tf;
  if (kBlock) c.blk = block_of(p, c);
}

// Warp x of w_eff owns global tiles [bound(x), bound(x + 1)); owner(i) is the warp that holds tile i.
// Tile counts fit int32 (the launcher checks); the products do not.
__device__ __forceinline__ int bound(int x, int total, int w_eff) {
  return static_cast<int>(static_cast<int64_t>(x) * total / w_eff);
}
__device__ __forceinline__ int owner(int i, int total, int w_eff) {
  return static_cast<int>((static_cast<int64_t>(i + 1) * w_eff + total - 1) / total - 1);
}

template <int D, int kStages, bool kKeysM>
__global__ void __launch_bounds__(32)
    flash_decode_persistent_kernel(attention_params p, int rows_cap, int block_shift, bool evict_first) {
  using C = persistent_cfg<D, kStages>;
  constexpr int kChunks = C::kChunks;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* ring = reinterpret_cast<bf16*>(smem_raw);  // [kStages][K tile, V tile]
  bf16* sq = ring + kStages * 2 * C::kTileElems;   // [16, D]: the current pair's query rows
  const int lane = threadIdx.x;
  const int H = p.num_kv_heads, group = p.num_heads / H;
  const bool fused_rope = p.rope.positions != nullptr;  // the launcher allows it with q_len == 1 only

  // Before pdl_wait(): the step's inputs (uploaded before its first kernel) and K/V of earlier steps only.
  // Total tiles, then this warp's range and the cursor at its start. Lane L counts the tiles of sequences
  // [base + 8 L, base + 8 L + 8): contiguous loads, all in flight at once.
  constexpr int kPerLane = 8;
  auto lane_counts = [&](int base, int(&n)[kPerLane]) {
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int s = base + lane * kPerLane + k;
      n[k] = 0;
      if (s < p.num_seqs) {
        int tf, tl, ctx, q0, q_len;
        seq_range(p, s, tf, tl, ctx, q0, q_len);
        n[k] = (tl - tf) * H;
      }
    }
  };
  int total = 0;
  for (int base = 0; base < p.num_seqs; base += 32 * kPerLane) {
    int n[kPerLane], sum = 0;
    lane_counts(base, n);
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) sum += n[k];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    total += sum;
  }
  const int w_eff = min(total, static_cast<int>(gridDim.x));
  const int w = blockIdx.x;
  if (w >= w_eff) return;
  const int g0 = bound(w, total, w_eff), g1 = bound(w + 1, total, w_eff);
  const int n_tiles = g1 - g0;

  cursor start{};
  {
    int before = 0;  // tiles of the sequences before this chunk
    for (int base = 0; base < p.num_seqs; base += 32 * kPerLane) {
      int n[kPerLane], sum = 0;
      lane_counts(base, n);  // again: L1 hits now
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) sum += n[k];
      int incl = sum;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
      }
      const unsigned hit = __ballot_sync(0xffffffffu, before + incl > g0);
      if (hit != 0) {
        // Each lane walks its own eight; the lane whose range holds g0 has the answer.
        int run = before + incl - sum, seq_start = 0;
        int found = -1;
#pragma unroll
        for (int k = 0; k < kPerLane; ++k) {
          if (found < 0 && run + n[k] > g0) {
            found = k;
            seq_start = run;
          }
          run += n[k];
        }
        const int src = __ffs(hit) - 1;
        found = __shfl_sync(0xffffffffu, found, src);
        seq_start = __shfl_sync(0xffffffffu, seq_start, src);
        start.s = base + src * kPerLane + found;
        seq_range(p, start.s, start.tf, start.tl, start.ctx, start.q0, start.q_len);
        const int per_head = start.tl - start.tf;
        start.h = static_cast<int>((g0 - seq_start) / per_head);
        start.t = start.tf + static_cast<int>((g0 - seq_start) % per_head);
        start.pair_start = seq_start + start.h * per_head;
        start.blk = block_of(p, start);
        break;
      }
      before += __shfl_sync(0xffffffffu, incl, 31);
    }
  }

  // One tile: 16 keys of K and of V. The new row of a fused-rope step is zero-filled (patched later); rows
  // past the context are zero-filled too (P = 0 times V must not be NaN).
  const uint64_t l2_policy = evict_first ? l2_evict_first_policy() : 0;
  auto load_tile = [&](const cursor& c, bf16* dst) {
    const int in0 = block_shift >= 0 ? (c.t * kKeys) & (p.block_size - 1) : (c.t * kKeys) % p.block_size;
    const int64_t row0 = static_cast<int64_t>(c.blk) * p.block_size + in0;
    const int skip = fused_rope ? c.ctx - 1 : -1;
#pragma unroll
    for (int i = lane; i < kKeys * kChunks; i += 32) {
      const int r = i / kChunks, ch = i % kChunks, j = c.t * kKeys + r;
      const bool valid = j < c.ctx && j != skip;
      const int64_t off = valid ? ((row0 + r) * H + c.h) * D + ch * 8 : 0;
      if (evict_first) {
        cp_async16_hint(dst + swz<D>(r, ch), p.k_cache + off, valid, l2_policy);
        cp_async16_hint(dst + C::kTileElems + swz<D>(r, ch), p.v_cache + off, valid, l2_policy);
      } else {
        cp_async16(dst + swz<D>(r, ch), p.k_cache + off, valid);
        cp_async16(dst + C::kTileElems + swz<D>(r, ch), p.v_cache + off, valid);
      }
    }
  };
  // Whether a tile holds a position of this step (written by the kernel before, when the rope is not fused).
  auto touches_new = [&](const cursor& c) { return (c.t + 1) * kKeys - 1 >= c.ctx - c.q_len; };

  cursor ld = start;
  int issued = 0;
  bool waited = false;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (issued < n_tiles) {
      if (!fused_rope && !waited && touches_new(ld)) {
        pdl_wait();
        waited = true;
      }
      load_tile(ld, ring + st * 2 * C::kTileElems);
      ++issued;
      if (issued < n_tiles) advance<true>(p, ld);
    }
    cp_async_commit();
  }
  if (!waited) pdl_wait();

  const float scale_log2 = p.scale * 1.4426950408889634f;
  const int g = lane / 4, tq = lane % 4;
  const uint32_t ring_u32 = static_cast<uint32_t>(__cvta_generic_to_shared(ring));
  const uint32_t sq_u32 = static_cast<uint32_t>(__cvta_generic_to_shared(sq));
  const decode_tile_offsets off = decode_offsets<D>(lane);

  using RL = rope_lanes<D>;
  // kKeysM (rows_cap <= 8): decode_tile_keys_m's layout, o[dp][j] = O[2 tq + j][16 dp + g (+ 8 at 2 + j)]
  // and m, l, row_pos by query column; else decode_tile's, o[dn][2 hh + e] = O[g + 8 hh][8 dn + 2 tq + e].
  constexpr int kOutTiles = kKeysM ? D / 16 : D / 8;
  float o[kOutTiles][4];
  float m[2], l[2];
  int row_pos[2];
  uint32_t qb[D / 16][2];  // kKeysM: the pair's query rows as B fragments
  int rows_total = 0, pos_base = 0;
  bool whole = false, first_piece = false, owns_last = false;
  bf16 nk_a[RL::kPairs], nk_b[RL::kPairs];  // the new key, rotated (lane's pairs), when owns_last
  uint4 nv = {};                            // the new value's chunk `lane` (lanes < kChunks)
  cursor cp = start;

  for (int i = 0; i < n_tiles; ++i) {
    if (i == 0 || cp.t == cp.tf) {
      // A new pair (or the first piece of one): its query rows into sq, and the new K/V where this warp
      // owns the pair's last tile. Every lane is past the last tile's reads of sq first.
      __syncwarp();
      const int pair_tiles = cp.tl - cp.tf;
      first_piece = i == 0;
      whole = cp.pair_start >= g0 && cp.pair_start + pair_tiles <= g1;
      owns_last = fused_rope && cp.pair_start + pair_tiles <= g1;
      rows_total = cp.q_len * group;
      pos_base = cp.ctx - cp.q_len;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int r = kKeysM ? 2 * tq + hh : g + 8 * hh;
        row_pos[hh] = r < rows_total ? pos_base + r / group : -1;
        m[hh] = -INFINITY;
        l[hh] = 0.0f;
      }
#pragma unroll
      for (int dn = 0; dn < kOutTiles; ++dn)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[dn][e] = 0.0f;
      const int64_t q_stride = p.q_stride > 0 ? p.q_stride : static_cast<int64_t>(p.num_heads) * D;
      if (fused_rope) {
        // Every row's raw elements, the new key and value are requested together (one round trip), the
        // angles computed once; then each row is finished exactly as rope_rotate_head does.
        const int tok = cp.q0;
        const bf16* row = p.q + static_cast<int64_t>(tok) * q_stride;
        const float* inv_freq = p.rope.inv_freq + tok * p.rope.inv_freq_stride;
        float ka[RL::kPairs], kb[RL::kPairs];
        if (owns_last) {
          rope_load_head<D>(row + (p.num_heads + cp.h) * D, lane, ka, kb);
          if (lane < kChunks)
            nv = *reinterpret_cast<const uint4*>(row + (p.num_heads + H + cp.h) * D + lane * 8);
        }
        float sn[RL::kPairs], cs[RL::kPairs];
        rope_angles<D>(static_cast<float>(p.rope.positions[tok]), inv_freq, lane, sn, cs);
        for (int r0 = 0; r0 < rows_total; r0 += 4) {
          float a[4][RL::kPairs], b[4][RL::kPairs];
#pragma unroll
          for (int k = 0; k < 4; ++k)
            if (r0 + k < rows_total) rope_load_head<D>(row + (cp.h * group + r0 + k) * D, lane, a[k], b[k]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const int r = r0 + k;
            if (r >= rows_total) break;
            bf16 ra[RL::kPairs], rb[RL::kPairs];
            rope_finish_head<D>(a[k], b[k], p.rope.q_norm_w, p.rope.norm_eps, sn, cs, lane, ra, rb);
            if (lane < RL::kLanesUsed) {
#pragma unroll
              for (int j = 0; j < RL::kPairs; ++j) {
                const int e = lane * RL::kPairs + j, f = RL::kHalf + e;
                sq[swz<D>(r, e / 8) + e % 8] = ra[j];
                sq[swz<D>(r, f / 8) + f % 8] = rb[j];
              }
            }
          }
        }
        if (owns_last) {
          // The new key, rotated (and normed) as rope_write_kv stores it, and the new value: into the cache
          // (for later steps) and kept for the patch of the last tile.
          // A negative slot (a padding token) writes nothing, as in rope_write_kv.
          rope_finish_head<D>(ka, kb, p.rope.k_norm_w, p.rope.norm_eps, sn, cs, lane, nk_a, nk_b);
          const int32_t slot = p.rope.slot_mapping[tok];
          const int64_t cache_off = (static_cast<int64_t>(slot) * H + cp.h) * D;
          const int i0 = lane < RL::kLanesUsed ? lane * RL::kPairs : 0;
          if (slot >= 0 && lane < RL::kLanesUsed) {
#pragma unroll
            for (int j = 0; j < RL::kPairs; ++j) {
              p.rope.k_cache[cache_off + i0 + j] = nk_a[j];
              p.rope.k_cache[cache_off + RL::kHalf + i0 + j] = nk_b[j];
            }
          }
          if (slot >= 0 && lane < kChunks)
            *reinterpret_cast<uint4*>(p.rope.v_cache + cache_off + lane * 8) = nv;
        }
      } else {
        for (int c = lane; c < rows_total * kChunks; c += 32) {
          const int r = c / kChunks, ch = c % kChunks;
          const int64_t off =
              static_cast<int64_t>(cp.q0 + r / group) * q_stride + (cp.h * group + r % group) * D + ch * 8;
          *reinterpret_cast<uint4*>(sq + swz<D>(r, ch)) = *reinterpret_cast<const uint4*>(p.q + off);
        }
      }
      for (int c = rows_total * kChunks + lane; c < 16 * kChunks; c += 32)  // padding rows: zero
        *reinterpret_cast<uint4*>(sq + swz<D>(c / kChunks, c % kChunks)) = uint4{};
      __syncwarp();
      if constexpr (kKeysM) {
        static_for<D / 32>([&](auto j_c) {
          constexpr int j = decltype(j_c)::value;
          uint32_t r4[4];
          ldmatrix_x4_at<(j / 2) * 128>(r4, sq_u32 + decode_q_frag_offset<D>(lane, j));
          qb[2 * j][0] = r4[0];
          qb[2 * j][1] = r4[1];
          qb[2 * j + 1][0] = r4[2];
          qb[2 * j + 1][1] = r4[3];
        });
      }
    }

    const int stage = i % kStages;
    cp_async_wait<kStages - 2>();  // tile i landed for this lane ...
    __syncwarp();                  // ... and every lane; all are done with tile i - 1's stage
    if (issued < n_tiles) {
      load_tile(ld, ring + ((i + kStages - 1) % kStages) * 2 * C::kTileElems);
      ++issued;
      if (issued < n_tiles) advance<true>(p, ld);
    }
    cp_async_commit();
    bf16* k_tile = ring + stage * 2 * C::kTileElems;
    if (owns_last && cp.t == cp.tl - 1) {  // the new row, from registers
      const int r = cp.ctx - 1 - cp.t * kKeys;
      const int i0 = lane < RL::kLanesUsed ? lane * RL::kPairs : 0;
      if (lane < RL::kLanesUsed) {
#pragma unroll
        for (int j = 0; j < RL::kPairs; ++j) {
          const int e = i0 + j, f = RL::kHalf + i0 + j;
          k_tile[swz<D>(r, e / 8) + e % 8] = nk_a[j];
          k_tile[swz<D>(r, f / 8) + f % 8] = nk_b[j];
        }
      }
      if (lane < kChunks) *reinterpret_cast<uint4*>(k_tile + C::kTileElems + swz<D>(r, lane)) = nv;
      __syncwarp();
    }
    const uint32_t k_stage = ring_u32 + stage * 2 * C::kTileElems * 2;
    const uint32_t v_stage = k_stage + C::kTileElems * 2;

    if constexpr (kKeysM) {
      decode_tile_keys_m<D>(k_stage, v_stage, off, qb, cp.t, pos_base, cp.ctx, p.sliding_window, row_pos,
                            scale_log2, g, m, l, o);
    } else {
      decode_tile<D>(sq_u32, k_stage, v_stage, off, cp.t, pos_base, cp.ctx, p.sliding_window, row_pos,
                     scale_log2, tq, m, l, o);
    }

    if (i == n_tiles - 1 || cp.t == cp.tl - 1) {
      // End of this warp's piece of the pair.
      if (i == n_tiles - 1) pdl_trigger();
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        if constexpr (kKeysM) {  // over the 8 lanes (g) of a column
          l[hh] += __shfl_xor_sync(0xffffffffu, l[hh], 4);
          l[hh] += __shfl_xor_sync(0xffffffffu, l[hh], 8);
          l[hh] += __shfl_xor_sync(0xffffffffu, l[hh], 16);
        } else {  // over the 4 lanes (tq) of a row
          l[hh] += __shfl_xor_sync(0xffffffffu, l[hh], 1);
          l[hh] += __shfl_xor_sync(0xffffffffu, l[hh], 2);
        }
      }
      auto out_row = [&](int r) {
        return static_cast<int64_t>(cp.q0 + r / group) * p.num_heads + cp.h * group + r % group;
      };
      if (whole && kKeysM) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int r = 2 * tq + j;
          if (r < rows_total) {
            const float inv = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
            bf16* dst = p.out + out_row(r) * D + g;
#pragma unroll
            for (int dp = 0; dp < kOutTiles; ++dp) {
              dst[16 * dp] = __float2bfloat16_rn(o[dp][j] * inv);
              dst[16 * dp + 8] = __float2bfloat16_rn(o[dp][2 + j] * inv);
            }
          }
        }
      } else if (whole) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int r = g + 8 * hh;
          if (r < rows_total) {
            const float inv = l[hh] > 0.0f ? 1.0f / l[hh] : 0.0f;
            bf16* dst = p.out + out_row(r) * D + 2 * tq;
#pragma unroll
            for (int dn = 0; dn < kOutTiles; ++dn)  // D / 8 here
              *reinterpret_cast<__nv_bfloat162*>(dst + dn * 8) =
                  __floats2bfloat162_rn(o[dn][2 * hh] * inv, o[dn][2 * hh + 1] * inv);
          }
        }
      } else {
        // A piece: (m, l, O) to this warp's slot (2 w for the piece at its range start, 2 w + 1 for the one
        // at its end), then the arrival; the last piece to arrive merges.
        const int64_t slot_floats = piece_slot_floats(rows_cap, D);
        float* slot = p.workspace + (2 * static_cast<int64_t>(w) + (first_piece ? 0 : 1)) * slot_floats;
        if constexpr (kKeysM) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int r = 2 * tq + j;
            if (r < rows_total) {
              float* dst = slot + r * D + g;
#pragma unroll
              for (int dp = 0; dp < kOutTiles; ++dp) {
                dst[16 * dp] = o[dp][j];
                dst[16 * dp + 8] = o[dp][2 + j];
              }
              if (g == 0) *reinterpret_cast<float2*>(slot + rows_cap * D + 2 * r) = make_float2(m[j], l[j]);
            }
          }
        }
#pragma unroll
        for (int hh = 0; hh < 2 && !kKeysM; ++hh) {
          const int r = g + 8 * hh;
          if (r < rows_total) {
            float* dst = slot + r * D + 2 * tq;
#pragma unroll
            for (int dn = 0; dn < kOutTiles; ++dn)  // D / 8 here
              *reinterpret_cast<float2*>(dst + dn * 8) = make_float2(o[dn][2 * hh], o[dn][2 * hh + 1]);
            if (tq == 0) *reinterpret_cast<float2*>(slot + rows_cap * D + 2 * r) = make_float2(m[hh], l[hh]);
          }
        }
        const int pair_tiles = cp.tl - cp.tf;
        const int w_first = owner(cp.pair_start, total, w_eff);
        const int w_last = owner(cp.pair_start + pair_tiles - 1, total, w_eff);
        const unsigned add = w == w_first ? kArrival - static_cast<unsigned>(w_last - w_first) : 1u;
        __threadfence();
        __syncwarp();
        unsigned before = 0;
        if (lane == 0) before = atomicAdd(&g_arrivals[cp.s * H + cp.h], add);
        before = __shfl_sync(0xffffffffu, before, 0);
        if ((before + add) % kArrival == 0) {
          __threadfence();
          __syncwarp();  // every lane past the fence before any reads another warp's piece
          // Merge the pieces in warp order, online (running max, rescaled sums): a pass covers four rows, 8
          // lanes a row and kC columns a lane.
          constexpr int kC = D / 8, kV = kC / 4;
          const int64_t ml_off = static_cast<int64_t>(rows_cap) * D;
          auto slot_of = [&](int x) {
            return p.workspace +
                   (2 * static_cast<int64_t>(x) + (cp.pair_start <= bound(x, total, w_eff) ? 0 : 1)) *
                       slot_floats;
          };
          for (int r0 = 0; r0 < rows_total; r0 += 4) {
            const int r = min(r0 + lane / 8, rows_total - 1), c0 = (lane % 8) * kC;
            float mx = -INFINITY, sum = 0.0f, acc[kC];
#pragma unroll
            for (int c = 0; c < kC; ++c) acc[c] = 0.0f;
            for (int x = w_first; x <= w_last; ++x) {
              const float* sl = slot_of(x);
              const float2 ml = __ldcg(reinterpret_cast<const float2*>(sl + ml_off + 2 * r));
              float4 ov[kV];
#pragma unroll
              for (int v = 0; v < kV; ++v)
                ov[v] = __ldcg(reinterpret_cast<const float4*>(sl + r * D + c0) + v);
              const float m_new = fmaxf(mx, ml.x);
              const float m_use = m_new == -INFINITY ? 0.0f : m_new;
              const float a_old = fast_exp2(mx - m_use), a_new = fast_exp2(ml.x - m_use);
              mx = m_new;
              sum = sum * a_old + ml.y * a_new;
#pragma unroll
              for (int v = 0; v < kV; ++v) {
                acc[4 * v] = acc[4 * v] * a_old + ov[v].x * a_new;
                acc[4 * v + 1] = acc[4 * v + 1] * a_old + ov[v].y * a_new;
                acc[4 * v + 2] = acc[4 * v + 2] * a_old + ov[v].z * a_new;
                acc[4 * v + 3] = acc[4 * v + 3] * a_old + ov[v].w * a_new;
              }
            }
            if (r0 + lane / 8 < rows_total) {
              const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
              bf16* dst = p.out + out_row(r) * D + c0;
#pragma unroll
              for (int c = 0; c < kC; c += 2)
                *reinterpret_cast<__nv_bfloat162*>(dst + c) =
                    __floats2bfloat162_rn(acc[c] * inv, acc[c + 1] * inv);
            }
          }
        }
      }
    }
    if (i + 1 < n_tiles) advance<false>(p, cp);
  }
  cp_async_wait<0>();
}

template <int D, int kStages, bool kKeysM>
int persistent_blocks_per_sm() {
  using C = persistent_cfg<D, kStages>;
  static const int n = [] {
    auto kernel = flash_decode_persistent_kernel<D, kStages, kKeysM>;
    set_max_dynamic_smem(kernel, C::kSmemBytes);
    int per_sm = 0;
    TROUPE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32, C::kSmemBytes));
    return std::max(1, per_sm);
  }();
  return n;
}

// Ring depth: 2 tiles (one in flight a warp while it computes the other; registers hold eight warps an SM at
// head_dim 128). H200, batch 256 at 520 keys: 3.70 TB/s against 3.59 with 3 tiles; engine batch 256 19.9k
// vs 19.5k tokens/s. TROUPE_PERSISTENT_STAGES=2|3|4 forces one (benchmarks).
int persistent_stages() {
  static const int v = [] {
    const char* e = std::getenv("TROUPE_PERSISTENT_STAGES");
    const int n = e != nullptr ? std::atoi(e) : 0;
    return n == 3 || n == 4 ? n : 2;
  }();
  return v;
}

// Whether the K/V tiles are loaded with an L2 evict-first policy (each is read once a step): yes unless
// TROUPE_DECODE_EVICT_FIRST=0. H200 (perf-notes v12): B256 ctx520 3.88 against 3.72 TB/s, engine batch 256
// 20.94k / 20.98k against 20.72k / 20.69k tokens/s.
bool evict_first_enabled() {
  static const bool v = [] {
    const char* e = std::getenv("TROUPE_DECODE_EVICT_FIRST");
    return e == nullptr || std::atoi(e) != 0;
  }();
  return v;
}

// Whether up to 8 rows a pair take the keys-as-m tile (decode_tile_keys_m): yes unless
// TROUPE_DECODE_KEYS_M=0 (benchmarks compare).
bool keys_m_enabled() {
  static const bool v = [] {
    const char* e = std::getenv("TROUPE_DECODE_KEYS_M");
    return e == nullptr || std::atoi(e) != 0;
  }();
  return v;
}

template <int D, bool kKeysM>
int64_t persistent_warps_at(int stages, int sms) {
  const int per_sm = stages == 2   ? persistent_blocks_per_sm<D, 2, kKeysM>()
                     : stages == 4 ? persistent_blocks_per_sm<D, 4, kKeysM>()
                                   : persistent_blocks_per_sm<D, 3, kKeysM>();
  return static_cast<int64_t>(sms) * per_sm;
}

template <int D, bool kKeysM>
void launch_at(int stages, const attention_params& p, int rows_cap, int sms, cudaStream_t stream) {
  const int64_t warps = persistent_warps_at<D, kKeysM>(stages, sms);
  const int block_shift = (p.block_size & (p.block_size - 1)) == 0 ? __builtin_ctz(p.block_size) : -1;
  const auto launch = [&](auto kernel, int smem) {
    set_max_dynamic_smem(kernel, smem);
    launch_pdl(kernel, dim3(static_cast<unsigned>(warps)), dim3(32), smem, stream, p, rows_cap, block_shift,
               evict_first_enabled());
  };
  if (stages == 2) {
    launch(flash_decode_persistent_kernel<D, 2, kKeysM>, persistent_cfg<D, 2>::kSmemBytes);
  } else if (stages == 4) {
    launch(flash_decode_persistent_kernel<D, 4, kKeysM>, persistent_cfg<D, 4>::kSmemBytes);
  } else {
    launch(flash_decode_persistent_kernel<D, 3, kKeysM>, persistent_cfg<D, 3>::kSmemBytes);
  }
}

// TROUPE_DECODE_PERSISTENT: unset -1 (the launcher chooses by the grid), a nonzero number 1 (wherever the
// kernel applies), anything else 0 (never unless forced).
int flash_decode_persistent_mode() {
  static const int v = [] {
    const char* e = std::getenv("TROUPE_DECODE_PERSISTENT");
    return e == nullptr ? -1 : std::atoi(e) != 0 ? 1 : 0;
  }();
  return v;
}

// The grid of a launch: by ring depth and tile variant.
int64_t persistent_warps_for(int head_dim, int stages, bool keys_m, int sms) {
  if (head_dim == 64)
    return keys_m ? persistent_warps_at<64, true>(stages, sms) : persistent_warps_at<64, false>(stages, sms);
  return keys_m ? persistent_warps_at<128, true>(stages, sms) : persistent_warps_at<128, false>(stages, sms);
}

}  // namespace

namespace detail {

size_t flash_decode_persistent_workspace_floats(int head_dim, int sms) {
  // Two slots a warp of at most 16 rows x (head_dim + 2) floats, at the largest grid of the ring depths and
  // tile variants.
  if (head_dim != 64 && head_dim != 128) return 0;
  int64_t warps = 0;
  for (int st = 2; st <= 4; ++st)
    for (bool keys_m : {false, true})
      warps = std::max(warps, persistent_warps_for(head_dim, st, keys_m, sms));
  return static_cast<size_t>(2 * warps * piece_slot_floats(16, head_dim));
}

bool flash_decode_persistent(const attention_params& p, bool force, int sms, cudaStream_t stream) {
  if (p.head_dim != 64 && p.head_dim != 128) return false;
  if (p.block_size % kKeys != 0) return false;
  const int group = p.num_heads / p.num_kv_heads;
  const int rows_cap = p.max_q_len * group;
  if (rows_cap > 16 || rows_cap <= 0) return false;
  if (p.rope.positions != nullptr && p.max_q_len != 1) return false;  // the fused rope: one token a sequence
  if (static_cast<int64_t>(p.num_seqs) * p.num_kv_heads > kMaxPairs) return false;
  if (static_cast<int64_t>(p.num_seqs) * p.num_kv_heads * ((p.max_context_len + kKeys - 1) / kKeys) >=
      (int64_t{1} << 30))
    return false;  // tile indices are int32 in the kernel
  const int mode = flash_decode_persistent_mode();
  if (!force && mode == 0) return false;
  // The per-pair kernel wins while its grid fits the GPU in about one wave (no tail to balance).
  if (!force && mode != 1 && static_cast<int64_t>(p.num_seqs) * p.num_kv_heads <= 2 * int64_t{sms})
    return false;
  const int stages = persistent_stages();
  const bool keys_m = rows_cap <= 8 && keys_m_enabled();
  const int64_t warps = persistent_warps_for(p.head_dim, stages, keys_m, sms);
  if (p.workspace == nullptr ||
      static_cast<size_t>(2 * warps * piece_slot_floats(rows_cap, p.head_dim)) > p.workspace_floats)
    return false;
  if (p.head_dim == 64) {
    keys_m ? launch_at<64, true>(stages, p, rows_cap, sms, stream)
           : launch_at<64, false>(stages, p, rows_cap, sms, stream);
  } else {
    keys_m ? launch_at<128, true>(stages, p, rows_cap, sms, stream)
           : launch_at<128, false>(stages, p, rows_cap, sms, stream);
  }
  return true;
}

}  // namespace detail
}  // namespace troupe::kernels::cuda
