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

}  // namespace troupe::kernels::cuda::detail
