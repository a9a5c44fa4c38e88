// One 16-key tile of the flash decode kernels (flash_decode.cu's per-pair kernel and
// flash_decode_persistent.cu), by one warp: S = Q K^T for up to 16 packed query rows on m16n8k16 MMAs (the
// rows are the m dimension; Q and the K/V tile sit XOR-swizzled in shared memory), masks where the tile
// crosses the last query's position (the context end, the diagonal of a multi-token run) or the window
// start, the online softmax in the log2 domain, then O += P V.
#pragma once

#include <cstdint>

#include "kernels/cuda/attention_internal.cuh"

namespace troupe::kernels::cuda::detail {

constexpr int kDecodeTileKeys = 16;

// ldmatrix byte offsets of this lane into the Q tile and a K or V tile (per group of four 16-column steps).
struct decode_tile_offsets {
  uint32_t q[4], k[4], v[4];
};

template <int D>
__device__ __forceinline__ decode_tile_offsets decode_offsets(int lane) {
  decode_tile_offsets off;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int x = lane & kSwizzleMask<D>;
    off.q[c] = (lane % 16) * D * 2 + (((c * 2 + lane / 16) ^ x) << 4);
    off.k[c] = ((lane / 16) * 8 + lane % 8) * D * 2 + (((c * 2 + (lane / 8) % 2) ^ x) << 4);
    off.v[c] = (((lane / 8) % 2) * 8 + lane % 8) * D * 2 + (((c * 2 + lane / 16) ^ x) << 4);
  }
  return off;
}

// Tile t (keys t * 16 ..) at shared addresses k_stage / v_stage against the query rows at sq. row_pos: the
// positions of this thread's rows g and g + 8 (-1 for padding rows); min_pos: the first query's position.
// m, l, o: this thread's running max (log2 domain), sum and output fragments.
template <int D>
__device__ __forceinline__ void decode_tile(uint32_t sq, uint32_t k_stage, uint32_t v_stage,
                                            const decode_tile_offsets& off, int t, int min_pos, int ctx,
                                            int window, const int (&row_pos)[2], float scale_log2, int tq,
                                            float (&m)[2], float (&l)[2], float (&o)[D / 8][4]) {
  constexpr int kKeys = kDecodeTileKeys;
  float s[2][4];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
  static_for<D / 16>([&](auto ks_c) {
    constexpr int ks = decltype(ks_c)::value;
    constexpr int kChunkImm = (ks / 4) * 128;  // the swizzle only permutes chunks within groups of 8
    uint32_t qa[4], kb[4];
    ldmatrix_x4_at<kChunkImm>(qa, sq + off.q[ks % 4]);
    ldmatrix_x4_at<kChunkImm>(kb, k_stage + off.k[ks % 4]);
    mma_bf16(s[0], qa, kb[0], kb[1]);
    mma_bf16(s[1], qa, kb[2], kb[3]);
  });

  // Masks only where the tile crosses the context end (or the diagonal of a multi-token run) or the window
  // start.
  const bool need_mask = (t + 1) * kKeys - 1 > min_pos || (window > 0 && t * kKeys <= ctx - 1 - window);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int pos = row_pos[h];
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& v = s[nt][2 * h + e];
        if (need_mask) {
          const int key = t * kKeys + nt * 8 + 2 * tq + e;
          if (key > pos || (window > 0 && key <= pos - window)) v = -INFINITY;
        }
        mx = fmaxf(mx, v);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[h], mx * scale_log2);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet stays all-zero
    const float corr = fast_exp2(m[h] - m_use);
    m[h] = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& v = s[nt][2 * h + e];
        v = fast_exp2(v * scale_log2 - m_use);
        sum += v;
      }
    l[h] = l[h] * corr + sum;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      o[dn][2 * h] *= corr;
      o[dn][2 * h + 1] *= corr;
    }
  }

  uint32_t pa[4];
  pa[0] = pack_bf16(s[0][0], s[0][1]);
  pa[1] = pack_bf16(s[0][2], s[0][3]);
  pa[2] = pack_bf16(s[1][0], s[1][1]);
  pa[3] = pack_bf16(s[1][2], s[1][3]);
  static_for<D / 16>([&](auto dp_c) {
    constexpr int dp = decltype(dp_c)::value;
    uint32_t vb[4];
    ldmatrix_x4_trans_at<(dp / 4) * 128>(vb, v_stage + off.v[dp % 4]);
    mma_bf16(o[2 * dp], pa, vb[0], vb[1]);
    mma_bf16(o[2 * dp + 1], pa, vb[2], vb[3]);
  });
}

// The transpose of an 8x8 b16 matrix held in mma fragment layout (thread T: row T / 4, columns 2 (T % 4) and
// 2 (T % 4) + 1), returned in the same layout.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// Lane offsets for decode_tile_keys_m's query fragments: ldmatrix (x4) j of the query rows at sq gives the B
// fragments of k-steps 2 j and 2 j + 1 (rows 0..7, chunks 4 j .. 4 j + 3); add (j / 2) * 128 bytes.
template <int D>
__device__ __forceinline__ uint32_t decode_q_frag_offset(int lane, int j) {
  return (lane % 8) * D * 2 + ((((j % 2) * 4 + lane / 8) ^ (lane & kSwizzleMask<D>)) << 4);
}

// The same tile for at most 8 query rows (a decode step of a GQA group of up to 8 heads) with the keys as
// the m dimension: S^T = K Q^T on m16n8k16 (16 keys x 8 query columns), then O^T += V^T P^T, P^T moved from
// the accumulator layout into the B operand by movmatrix. Against decode_tile, whose m = 16 query rows are
// at least half padding here: half the MMAs and exponentials, no per-tile reads of the query rows (qb holds
// their B fragments, loaded once a pair) and half the output accumulators.
// Thread (g, tq) holds query columns c = 2 tq + j (j = 0, 1): col_pos[j], m[j], l[j] (its own keys' part
// of the sum: add across g at the end), o[dp][j] = O[c][16 dp + g] and o[dp][2 + j] = O[c][16 dp + g + 8].
// The K tile is read with decode_tile_offsets::q (the A operand, as the query rows in decode_tile) and the
// V tile with ::k (transposed, as the keys in decode_tile).
template <int D>
__device__ __forceinline__ void decode_tile_keys_m(uint32_t k_stage, uint32_t v_stage,
                                                   const decode_tile_offsets& off,
                                                   const uint32_t (&qb)[D / 16][2], int t, int min_pos,
                                                   int ctx, int window, const int (&col_pos)[2],
                                                   float scale_log2, int g, float (&m)[2], float (&l)[2],
                                                   float (&o)[D / 16][4]) {
  constexpr int kKeys = kDecodeTileKeys;
  float s[2][4];  // two accumulation chains (even and odd k-steps), added after
#pragma unroll
  for (int c = 0; c < 2; ++c)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[c][e] = 0.0f;
  static_for<D / 16>([&](auto ks_c) {
    constexpr int ks = decltype(ks_c)::value;
    uint32_t ka[4];
    ldmatrix_x4_at<(ks / 4) * 128>(ka, k_stage + off.q[ks % 4]);
    mma_bf16(s[ks % 2], ka, qb[ks][0], qb[ks][1]);
  });
#pragma unroll
  for (int e = 0; e < 4; ++e) s[0][e] += s[1][e];

  const bool need_mask = (t + 1) * kKeys - 1 > min_pos || (window > 0 && t * kKeys <= ctx - 1 - window);
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    float& v0 = s[0][j];      // key t * 16 + g
    float& v1 = s[0][2 + j];  // key t * 16 + g + 8
    if (need_mask) {
      const int pos = col_pos[j], key = t * kKeys + g;
      if (key > pos || (window > 0 && key <= pos - window)) v0 = -INFINITY;
      if (key + 8 > pos || (window > 0 && key + 8 <= pos - window)) v1 = -INFINITY;
    }
    float mx = fmaxf(v0, v1);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
    const float m_new = fmaxf(m[j], mx * scale_log2);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a column with no key yet stays all-zero
    const float corr = fast_exp2(m[j] - m_use);
    m[j] = m_new;
    v0 = fast_exp2(v0 * scale_log2 - m_use);
    v1 = fast_exp2(v1 * scale_log2 - m_use);
    l[j] = l[j] * corr + (v0 + v1);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      o[dp][j] *= corr;
      o[dp][2 + j] *= corr;
    }
  }
  // P^T as the B operand (k = 16 keys, n = 8 columns): the accumulator holds P^T's rows g and g + 8, so
  // each 8-key half is P^T's transpose in fragment layout; movmatrix turns it around.
  const uint32_t b0 = movmatrix_trans(pack_bf16(s[0][0], s[0][1]));
  const uint32_t b1 = movmatrix_trans(pack_bf16(s[0][2], s[0][3]));
  static_for<D / 16>([&](auto dp_c) {
    constexpr int dp = decltype(dp_c)::value;
    uint32_t va[4];
    ldmatrix_x4_trans_at<(dp / 4) * 128>(va, v_stage + off.k[dp % 4]);
    mma_bf16(o[dp], va, b0, b1);
  });
}

}  // namespace troupe::kernels::cuda::detail
