// Block-wide helpers of sample_rows (kernels/cuda/sampling.cu): the block shape, the exact fixed-point sums
// of weights, order-preserving rank keys, and the radix selects (by count and by mass) over a row. The
// helpers that synchronize the block must be reached by all kSampleThreads threads. Included only by
// sampling.cu.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cuda/sampling.h"

namespace troupe::kernels::cuda::detail {

// 1024 threads per row: the kernel is bound by instruction issue on the SMs it has (one per row), and at
// 512 threads each scheduler had 4 warps to pick from (H200, batch-1 top-p: 1.47 -> 0.92 ms per draw with
// 1024). At 1024 the register cap (64) makes ptxas spill ~350 bytes; measured faster anyway.
constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kHalfBits = 42;
constexpr double kTwo42 = 4398046511104.0;    // 2^42
constexpr double kTwo84 = kTwo42 * kTwo42;    // 2^84
constexpr double kTwoMinus84 = 1.0 / kTwo84;  // exact
using u128 = unsigned __int128;

// A sum of weights: hi * 2^42 + lo, in units of 2^-84.
struct fx_sum {
  unsigned long long hi, lo;
};

__device__ __forceinline__ fx_sum fx_add(fx_sum a, fx_sum b) { return {a.hi + b.hi, a.lo + b.lo}; }

// floor(w * 2^84) for w in [0, 1], as halves; every step is exact in double.
__device__ __forceinline__ fx_sum fx_of(float w) {
  const double d = static_cast<double>(w) * kTwo42;
  const unsigned long long hi = __double2ull_rz(d);
  return {hi, __double2ull_rz((d - static_cast<double>(hi)) * kTwo42)};
}

__device__ __forceinline__ u128 fx_value(fx_sum s) { return (static_cast<u128>(s.hi) << kHalfBits) + s.lo; }

// x rounded to nearest (ties to even), as the CPU's double arithmetic would hold it.
__device__ inline double u128_to_double(u128 x) {
  const auto top = static_cast<unsigned long long>(x >> 64);
  if (top == 0) return __ull2double_rn(static_cast<unsigned long long>(x));
  const int shift = 64 - __clzll(static_cast<long long>(top));
  auto y = static_cast<unsigned long long>(x >> shift);
  y |= (x & ((static_cast<u128>(1) << shift) - 1)) != 0 ? 1ull : 0ull;  // sticky bit: 11 bits below a double
  return ldexp(__ull2double_rn(y), shift);
}

// floor(x) (or ceil) for 0 <= x < 2^127.
__device__ inline u128 double_to_u128(double x, bool up) {
  if (x < 18446744073709551616.0) return up ? __double2ull_ru(x) : __double2ull_rd(x);
  int e = 0;
  const double f = frexp(x, &e);  // x = f * 2^e, f in [0.5, 1); x is an integer here
  return static_cast<u128>(static_cast<unsigned long long>(ldexp(f, 53))) << (e - 53);
}

// Order-preserving key of a float (NaN excluded): a larger float gets a larger key; -0 and +0, which
// compare equal, get the same key.
__device__ __forceinline__ uint32_t rank_key(float x) {
  const uint32_t b = x == 0.0f ? 0u : __float_as_uint(x);
  return (b & 0x80000000u) != 0 ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) != 0 ? (k & 0x7fffffffu) : ~k);
}
// Whether token i (key ki) comes at or before token c (key kc) in rank order.
__device__ __forceinline__ bool at_or_before(uint32_t ki, int32_t i, uint32_t kc, int32_t c) {
  return ki > kc || (ki == kc && i <= c);
}

struct sample_shared {
  uint32_t count[256];                            // radix histogram: elements per digit
  unsigned long long mass_hi[256], mass_lo[256];  // radix histogram: weight per digit (fx halves)
  unsigned long long warp_hi[kSampleWarps], warp_lo[kSampleWarps];
  uint32_t warp_count[kSampleWarps];
  int32_t warp_last[kSampleWarps];
  float warp_best[kSampleWarps], warp_sum[kSampleWarps];
  int32_t warp_id[kSampleWarps], warp_bad[kSampleWarps];
  uint32_t sel_digit, sel_count, top_n;
  unsigned long long sel_hi, sel_lo;  // a u128 being passed between passes, as two halves
  int32_t sel_warp, sel_id, sel_ok;
  float row_max, adj_max;
  int32_t row_arg, adj_arg, bad;
  double lse;
  uint32_t top_key[kSampleMaxTop];
  int32_t top_id[kSampleMaxTop];
};

__device__ __forceinline__ void store_u128(sample_shared& sm, u128 v) {
  sm.sel_hi = static_cast<unsigned long long>(v >> 64);
  sm.sel_lo = static_cast<unsigned long long>(v);
}
__device__ __forceinline__ u128 load_u128(const sample_shared& sm) {
  return (static_cast<u128>(sm.sel_hi) << 64) | sm.sel_lo;
}

// This warp's contiguous share of [0, n), a multiple of 32 long (the last may be shorter or empty).
constexpr uint32_t kNoDigit = 256;  // a lane with no element in the radix pass

struct segment {
  int32_t begin, end;
};
__device__ __forceinline__ segment warp_segment(int32_t n) {
  const int32_t len = ((n + kSampleWarps - 1) / kSampleWarps + 31) / 32 * 32;
  const int32_t b = min(n, static_cast<int32_t>(threadIdx.x >> 5) * len);
  return {b, min(n, b + len)};
}

__device__ __forceinline__ fx_sum warp_sum(fx_sum s) {
  for (int d = 16; d > 0; d >>= 1) {
    s.hi += __shfl_xor_sync(0xffffffffu, s.hi, d);
    s.lo += __shfl_xor_sync(0xffffffffu, s.lo, d);
  }
  return s;
}

// Per warp: its sum and its last contributing id, into sm.warp_hi/lo/last (then synchronized).
__device__ inline void store_warp_sums(sample_shared& sm, fx_sum s, int32_t last) {
  s = warp_sum(s);
  for (int d = 16; d > 0; d >>= 1) last = max(last, __shfl_xor_sync(0xffffffffu, last, d));
  if ((threadIdx.x & 31) == 0) {
    const int warp = threadIdx.x >> 5;
    sm.warp_hi[warp] = s.hi;
    sm.warp_lo[warp] = s.lo;
    sm.warp_last[warp] = last;
  }
  __syncthreads();
}

// The id of the m-th (1-based) token in id order among those with key_of(i) == key.
template <class KeyOf>
__device__ int32_t nth_with_key(sample_shared& sm, int32_t n, KeyOf key_of, uint32_t key, uint32_t m) {
  const segment seg = warp_segment(n);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t c = 0;
  for (int32_t i = seg.begin + lane; i < seg.end; i += 32) c += key_of(i) == key;
  for (int d = 16; d > 0; d >>= 1) c += __shfl_xor_sync(0xffffffffu, c, d);
  if (lane == 0) sm.warp_count[warp] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t before = 0;
    sm.sel_warp = -1;
    for (int w = 0; w < kSampleWarps; ++w) {
      if (before + sm.warp_count[w] >= m) {
        sm.sel_warp = w;
        sm.sel_count = m - before;
        break;
      }
      before += sm.warp_count[w];
    }
    sm.sel_id = -1;
  }
  __syncthreads();
  if (warp == sm.sel_warp) {
    uint32_t left = sm.sel_count;
    for (int32_t base = seg.begin; base < seg.end; base += 32) {
      const int32_t i = base + lane;
      uint32_t hits = __ballot_sync(0xffffffffu, i < seg.end && key_of(i) == key);
      const uint32_t got = __popc(hits);
      if (left <= got) {
        for (uint32_t j = 1; j < left; ++j) hits &= hits - 1;
        if (lane == 0) sm.sel_id = base + __ffs(hits) - 1;
        break;
      }
      left -= got;
    }
  }
  __syncthreads();
  return sm.sel_id;
}

// Radix select by count: the key t of the k-th (1-based) element in rank order of key_of over [0, n),
// and m = its position among the elements with key t (so the element is nth_with_key(t, m)).
template <class KeyOf>
__device__ void select_by_count(sample_shared& sm, int32_t n, KeyOf key_of, uint32_t k, uint32_t& t,
                                uint32_t& m) {
  const segment seg = warp_segment(n);
  const int lane = threadIdx.x & 31;
  uint32_t prefix = 0, mask = 0, rem = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += kSampleThreads) sm.count[d] = 0;
    __syncthreads();
    // Lanes with the same digit add once (their count): the first passes see few distinct digits (the
    // exponent bits), and one shared-memory atomic per element serialized on them.
    for (int32_t base = seg.begin; base < seg.end; base += 32) {
      const int32_t i = base + lane;
      uint32_t d = kNoDigit;
      if (i < seg.end) {
        const uint32_t key = key_of(i);
        if ((key & mask) == prefix) d = (key >> shift) & 255u;
      }
      const unsigned peers = __match_any_sync(0xffffffffu, d);
      if (d != kNoDigit && lane == __ffs(peers) - 1)
        atomicAdd(&sm.count[d], static_cast<uint32_t>(__popc(peers)));
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l holds digits 255 - 8l down to 248 - 8l: lanes in descending digit order.
      uint32_t c[8], s = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) s += c[j] = sm.count[255 - 8 * lane - j];
      uint32_t incl = s;
      for (int d = 1; d < 32; d <<= 1) {
        const uint32_t o = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d) incl += o;
      }
      uint32_t before = incl - s;
      if (before < rem && rem <= incl) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (before + c[j] >= rem) {
            sm.sel_digit = 255 - 8 * lane - j;
            sm.sel_count = rem - before;
            break;
          }
          before += c[j];
        }
      }
    }
    __syncthreads();
    prefix |= sm.sel_digit << shift;
    mask |= 255u << shift;
    rem = sm.sel_count;
    __syncthreads();
  }
  t = prefix;
  m = rem;
}

// Radix select by mass: the key t of the first element, in rank order of key_of over the elements with
// w[i] > 0, where the cumulative weight reaches `need`, and `above`, the weight of all elements with keys
// above t. sm.sel_ok = 0 when the weights never reach `need` (cannot happen when need <= their sum).
template <class KeyOf>
__device__ void select_by_mass(sample_shared& sm, int32_t n, KeyOf key_of, const float* w, u128 need,
                               uint32_t& t, u128& above) {
  const segment seg = warp_segment(n);
  const int lane = threadIdx.x & 31;
  uint32_t prefix = 0, mask = 0;
  u128 rem = need;
  above = 0;
  if (threadIdx.x == 0) sm.sel_ok = 1;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += kSampleThreads) sm.mass_hi[d] = sm.mass_lo[d] = 0;
    __syncthreads();
    // As in select_by_count, lanes with the same digit add once: their weights are summed over the warp
    // first (exact: the halves add separately, as the atomics would).
    for (int32_t base = seg.begin; base < seg.end; base += 32) {
      const int32_t i = base + lane;
      uint32_t d = kNoDigit;
      fx_sum f{0, 0};
      if (i < seg.end) {
        const float wi = w[i];
        if (wi > 0.0f) {
          const uint32_t key = key_of(i);
          if ((key & mask) == prefix) {
            f = fx_of(wi);
            d = (key >> shift) & 255u;
          }
        }
      }
      // One round per distinct digit among the lanes (a few in the exponent-bit passes): a butterfly
      // sum of that digit's weights, one pair of atomics.
      for (unsigned todo = __ballot_sync(0xffffffffu, d != kNoDigit); todo != 0;) {
        const int leader = __ffs(todo) - 1;
        const uint32_t dd = __shfl_sync(0xffffffffu, d, leader);
        const bool mine = d == dd;
        todo &= ~__ballot_sync(0xffffffffu, mine);
        fx_sum v = mine ? f : fx_sum{0, 0};
        for (int o = 16; o > 0; o >>= 1) {
          v.hi += __shfl_xor_sync(0xffffffffu, v.hi, o);
          v.lo += __shfl_xor_sync(0xffffffffu, v.lo, o);
        }
        if (lane == leader) {
          atomicAdd(&sm.mass_hi[dd], v.hi);
          atomicAdd(&sm.mass_lo[dd], v.lo);
        }
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      if (lane == 0) sm.sel_digit = 256;
      __syncwarp();
      fx_sum c[8], s{0, 0};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        c[j] = {sm.mass_hi[255 - 8 * lane - j], sm.mass_lo[255 - 8 * lane - j]};
        s = fx_add(s, c[j]);
      }
      fx_sum incl = s;
      for (int d = 1; d < 32; d <<= 1) {
        const unsigned long long oh = __shfl_up_sync(0xffffffffu, incl.hi, d);
        const unsigned long long ol = __shfl_up_sync(0xffffffffu, incl.lo, d);
        if (lane >= d) incl = fx_add(incl, {oh, ol});
      }
      u128 before = fx_value(incl) - fx_value(s);
      if (before < rem && rem <= fx_value(incl)) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const u128 cj = fx_value(c[j]);
          if (before + cj >= rem) {
            sm.sel_digit = 255 - 8 * lane - j;
            store_u128(sm, before);
            break;
          }
          before += cj;
        }
      }
      __syncwarp();
      if (lane == 0 && sm.sel_digit == 256) sm.sel_ok = 0;
    }
    __syncthreads();
    if (!sm.sel_ok) return;
    const u128 skipped = load_u128(sm);
    prefix |= sm.sel_digit << shift;
    mask |= 255u << shift;
    rem -= skipped;
    above += skipped;
    __syncthreads();
  }
  t = prefix;
}

}  // namespace troupe::kernels::cuda::detail
