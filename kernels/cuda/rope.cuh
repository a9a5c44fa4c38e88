// The rotary embedding of one head row, by one warp: shared by rope_write_kv (elementwise.cu) and the flash
// decode kernel that applies it itself (flash_decode.cu), so that both round exactly alike.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace troupe::kernels::cuda::detail {

// Lane l owns the rotation pairs (i, i + D / 2) for i in [l * kPairs, (l + 1) * kPairs), so each lane holds
// both halves it rotates; at head_dim 32 only 16 lanes have a pair.
template <int D>
struct rope_lanes {
  static constexpr int kHalf = D / 2;
  static constexpr int kLanesUsed = kHalf < 32 ? kHalf : 32;
  static constexpr int kPairs = kHalf / kLanesUsed;
};

__device__ __forceinline__ float rope_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The pieces of rope_rotate_head, for callers that rotate several rows of one token: load every row first
// (one round trip), the angles once, then finish each row. rope_rotate_head is exactly these three.
template <int D>
__device__ __forceinline__ void rope_load_head(const __nv_bfloat16* v, int lane,
                                               float (&a)[rope_lanes<D>::kPairs],
                                               float (&b)[rope_lanes<D>::kPairs]) {
  using L = rope_lanes<D>;
  const int i0 = lane < L::kLanesUsed ? lane * L::kPairs : 0;
#pragma unroll
  for (int j = 0; j < L::kPairs; ++j) {
    a[j] = __bfloat162float(v[i0 + j]);
    b[j] = __bfloat162float(v[L::kHalf + i0 + j]);
  }
}

template <int D>
__device__ __forceinline__ void rope_angles(float pos, const float* inv_freq, int lane,
                                            float (&sn)[rope_lanes<D>::kPairs],
                                            float (&cs)[rope_lanes<D>::kPairs]) {
  using L = rope_lanes<D>;
  const int i0 = lane < L::kLanesUsed ? lane * L::kPairs : 0;
#pragma unroll
  for (int j = 0; j < L::kPairs; ++j) sincosf(pos * inv_freq[i0 + j], &sn[j], &cs[j]);
}

// The optional per-head RMSNorm (Qwen3's q/k norm, rounded to bf16 as the unfused path stores it), then the
// rotation, rounded. Every lane of the warp must call it (the norm's sum is warp-wide).
template <int D>
__device__ __forceinline__ void rope_finish_head(
    float (&a)[rope_lanes<D>::kPairs], float (&b)[rope_lanes<D>::kPairs], const __nv_bfloat16* norm_w,
    float eps, const float (&sn)[rope_lanes<D>::kPairs], const float (&cs)[rope_lanes<D>::kPairs], int lane,
    __nv_bfloat16 (&ra)[rope_lanes<D>::kPairs], __nv_bfloat16 (&rb)[rope_lanes<D>::kPairs]) {
  using L = rope_lanes<D>;
  const bool active = lane < L::kLanesUsed;
  const int i0 = active ? lane * L::kPairs : 0;
  if (norm_w != nullptr) {
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < L::kPairs; ++j)
      if (active) ss += a[j] * a[j] + b[j] * b[j];
    const float inv = rsqrtf(rope_warp_sum(ss) / D + eps);
#pragma unroll
    for (int j = 0; j < L::kPairs; ++j) {
      a[j] = __bfloat162float(__float2bfloat16(__bfloat162float(norm_w[i0 + j]) * (a[j] * inv)));
      b[j] = __bfloat162float(__float2bfloat16(__bfloat162float(norm_w[L::kHalf + i0 + j]) * (b[j] * inv)));
    }
  }
#pragma unroll
  for (int j = 0; j < L::kPairs; ++j) {
    ra[j] = __float2bfloat16(a[j] * cs[j] - b[j] * sn[j]);
    rb[j] = __float2bfloat16(b[j] * cs[j] + a[j] * sn[j]);
  }
}

// Reads head row v ([D], bf16), applies the optional per-head RMSNorm, then rotates by pos * inv_freq and
// rounds: ra[j] / rb[j] are elements i0 + j and D / 2 + i0 + j of the result, i0 = lane * kPairs. Every lane
// of the warp must call it; lanes past kLanesUsed get nothing meaningful and must not store.
template <int D>
__device__ __forceinline__ void rope_rotate_head(const __nv_bfloat16* v, const __nv_bfloat16* norm_w,
                                                 float eps, float pos, const float* inv_freq, int lane,
                                                 __nv_bfloat16 (&ra)[rope_lanes<D>::kPairs],
                                                 __nv_bfloat16 (&rb)[rope_lanes<D>::kPairs]) {
  using L = rope_lanes<D>;
  float a[L::kPairs], b[L::kPairs], sn[L::kPairs], cs[L::kPairs];
  rope_load_head<D>(v, lane, a, b);
  rope_angles<D>(pos, inv_freq, lane, sn, cs);
  rope_finish_head<D>(a, b, norm_w, eps, sn, cs, lane, ra, rb);
}

}  // namespace troupe::kernels::cuda::detail
