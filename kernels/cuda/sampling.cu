// Sampling on the device, so that a step returns a few bytes per sequence instead of a vocabulary-wide row
// of floats: the greedy argmax (argmax_logprob), and sample_rows, which reproduces sampler::sample.
#include <cfloat>
#include <cmath>

#include "core/rng.h"
#include "core/sampling_weight.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/sampling.h"

namespace troupe::kernels::cuda {
namespace {

constexpr int kThreads = 1024;

// Running state of one thread: the best logit and its id, and the online softmax denominator sum(exp(l -
// m)) against the running maximum m (FlashAttention's rescaling trick), so one pass over the row suffices.
struct arg_state {
  float best;
  int32_t id;
  float sum;  // relative to best
  int nan;
};

__device__ __forceinline__ void push(arg_state& s, float x, int32_t i) {
  if (x != x) {
    s.nan = 1;
    return;
  }
  if (x > s.best) {
    s.sum = s.sum * __expf(s.best - x) + 1.0f;  // best == -inf: sum was 0, stays exact
    s.best = x;
    s.id = i;
  } else {
    s.sum += __expf(x - s.best);
  }
}

__device__ __forceinline__ arg_state merge(arg_state a, const arg_state& b) {
  arg_state r;
  r.nan = a.nan | b.nan;
  if (b.best > a.best || (b.best == a.best && b.id < a.id)) {
    r.best = b.best;
    r.id = b.id;
  } else {
    r.best = a.best;
    r.id = a.id;
  }
  const float sa = a.best == -INFINITY ? 0.0f : a.sum * __expf(a.best - r.best);
  const float sb = b.best == -INFINITY ? 0.0f : b.sum * __expf(b.best - r.best);
  r.sum = sa + sb;
  return r;
}

__device__ __forceinline__ arg_state shfl_down(const arg_state& s, int delta) {
  arg_state o;
  o.best = __shfl_down_sync(0xffffffffu, s.best, delta);
  o.id = __shfl_down_sync(0xffffffffu, s.id, delta);
  o.sum = __shfl_down_sync(0xffffffffu, s.sum, delta);
  o.nan = __shfl_down_sync(0xffffffffu, s.nan, delta);
  return o;
}

// One block per row. Threads read the row in strided float4s (coalesced), then a warp-shuffle and a
// shared-memory reduction combine the states; ties resolve to the lower id at every merge.
__global__ void argmax_logprob_kernel(const float* __restrict__ logits, int64_t vocab,
                                      int32_t* __restrict__ ids, float* __restrict__ logprobs) {
  pdl_wait();
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  arg_state s{-INFINITY, INT32_MAX, 0.0f, 0};
  const bool aligned = (reinterpret_cast<uintptr_t>(row) & 15) == 0;
  int64_t i0 = 0;
  if (aligned) {
    const int64_t n4 = vocab / 4;
    const float4* row4 = reinterpret_cast<const float4*>(row);
    for (int64_t j = threadIdx.x; j < n4; j += blockDim.x) {
      const float4 v = row4[j];
      const int32_t base = static_cast<int32_t>(4 * j);
      push(s, v.x, base);
      push(s, v.y, base + 1);
      push(s, v.z, base + 2);
      push(s, v.w, base + 3);
    }
    i0 = 4 * n4;
  }
  for (int64_t j = i0 + threadIdx.x; j < vocab; j += blockDim.x) push(s, row[j], static_cast<int32_t>(j));
  // Within a thread ids only grow, and "x > best" keeps the first of equal values: ties keep the lowest.
  for (int d = 16; d > 0; d >>= 1) s = merge(s, shfl_down(s, d));
  __shared__ arg_state warp_states[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_states[warp] = s;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = (blockDim.x + 31) / 32;
    s = lane < nwarps ? warp_states[lane] : arg_state{-INFINITY, INT32_MAX, 0.0f, 0};
    for (int d = 16; d > 0; d >>= 1) s = merge(s, shfl_down(s, d));
    if (lane == 0) {
      if (s.nan || s.best == -INFINITY || s.best == INFINITY) {
        ids[blockIdx.x] = -1;  // the host reports the bad row
        logprobs[blockIdx.x] = NAN;
      } else {
        ids[blockIdx.x] = s.id;
        logprobs[blockIdx.x] = -logf(s.sum);  // logit[id] - (best + log(sum)) with logit[id] == best
      }
    }
  }
}

}  // namespace

void argmax_logprob(const float* logits, int64_t rows, int64_t vocab, int32_t* ids, float* logprobs,
                    cudaStream_t stream) {
  if (rows == 0) return;
  if (vocab <= 0 || vocab > INT32_MAX) raise_cuda("argmax_logprob", "vocab out of range", __FILE__, __LINE__);
  launch_pdl(argmax_logprob_kernel, dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0, stream, logits,
             vocab, ids, logprobs);
}

namespace {

// ---- sample_rows: sampler::sample on the device ----
//
// One block per row, in passes over the row (each warp owns a contiguous segment and reads it 32 floats at
// a time, so "ascending id" orders are warp-by-warp then lane-by-lane):
//   1. raw logits: NaN/+inf check, maximum and log-sum-exp (the logprobs), argmax (greedy); writes the
//      temperature-scaled logits `adj` to the workspace;
//   2. the penalty entries rewrite their adj (one thread per distinct id: no conflicts);
//   3. top-k: the k-th best adj in rank order (higher value first, ties by lower id) by a radix select on
//      order-preserving 32-bit keys, four 8-bit digits, counts in shared memory;
//   4. weights w = sampling_weight(adj, max) of the top-k survivors, 0 for the others (workspace);
//   5. top-p: the same radix select over the mass instead of counts;
//   6. the inverse-CDF walk: per-warp sums of the kept weights, then the warp holding the crossing scans.
// Sums of weights are exact: a weight in [0, 1] becomes an integer in units of 2^-84 (two 42-bit halves,
// summed separately in 64 bits), so no result depends on the order of the additions and the device
// computes the mathematically exact cutoffs where the CPU rounds in double.

// 1024 threads per row: the kernel is bound by instruction issue on the SMs it has (one per row), and at
// 512 threads each scheduler had 4 warps to pick from (H200, batch-1 top-p: 1.47 -> 0.92 ms per draw with
// 1024). At 1024 the register cap (64) makes ptxas spill ~350 bytes; measured faster anyway.
constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr float kGreedyTemperature = 1e-5f;  // sampling_greedy_temperature
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
__device__ double u128_to_double(u128 x) {
  const auto top = static_cast<unsigned long long>(x >> 64);
  if (top == 0) return __ull2double_rn(static_cast<unsigned long long>(x));
  const int shift = 64 - __clzll(static_cast<long long>(top));
  auto y = static_cast<unsigned long long>(x >> shift);
  y |= (x & ((static_cast<u128>(1) << shift) - 1)) != 0 ? 1ull : 0ull;  // sticky bit: 11 bits below a double
  return ldexp(__ull2double_rn(y), shift);
}

// floor(x) (or ceil) for 0 <= x < 2^127.
__device__ u128 double_to_u128(double x, bool up) {
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

// Thread-local state of pass 1: the maximum (first id on ties), sum(exp(x - best)) and a NaN flag.
struct max_state {
  float best;
  int32_t id;
  float sum;
  int bad;
};
__device__ __forceinline__ void max_push(max_state& s, float x, int32_t i) {
  if (x != x) {
    s.bad = 1;
  } else if (x > s.best) {
    s.sum = s.best == -INFINITY ? 1.0f : s.sum * expf(s.best - x) + 1.0f;
    s.best = x;
    s.id = i;
  } else if (x != -INFINITY) {
    s.sum += expf(x - s.best);
  }
}
__device__ __forceinline__ max_state max_merge(max_state a, max_state b) {
  max_state r;
  r.bad = a.bad | b.bad;
  const bool take_b = b.best > a.best || (b.best == a.best && b.id < a.id);
  r.best = take_b ? b.best : a.best;
  r.id = take_b ? b.id : a.id;
  const float sa = a.best == -INFINITY ? 0.0f : a.sum * expf(a.best - r.best);
  const float sb = b.best == -INFINITY ? 0.0f : b.sum * expf(b.best - r.best);
  r.sum = r.best == INFINITY ? 0.0f : sa + sb;
  return r;
}
// Block-wide max_state; the result is in sm (row_max/row_arg/bad/lse when `raw`, else adj_max/adj_arg).
__device__ void block_max(sample_shared& sm, max_state s, bool raw) {
  for (int d = 16; d > 0; d >>= 1) {
    max_state o;
    o.best = __shfl_down_sync(0xffffffffu, s.best, d);
    o.id = __shfl_down_sync(0xffffffffu, s.id, d);
    o.sum = __shfl_down_sync(0xffffffffu, s.sum, d);
    o.bad = __shfl_down_sync(0xffffffffu, s.bad, d);
    s = max_merge(s, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sm.warp_best[warp] = s.best;
    sm.warp_id[warp] = s.id;
    sm.warp_sum[warp] = s.sum;
    sm.warp_bad[warp] = s.bad;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    max_state r{sm.warp_best[0], sm.warp_id[0], sm.warp_sum[0], sm.warp_bad[0]};
    for (int w = 1; w < kSampleWarps; ++w)
      r = max_merge(r, max_state{sm.warp_best[w], sm.warp_id[w], sm.warp_sum[w], sm.warp_bad[w]});
    if (raw) {
      sm.row_max = r.best;
      sm.row_arg = r.id;
      sm.bad = r.bad || r.best == INFINITY || r.best == -INFINITY;
      sm.lse = static_cast<double>(r.best) + log(static_cast<double>(r.sum));
    } else {
      sm.adj_max = r.best;
      sm.adj_arg = r.id;
    }
  }
  __syncthreads();
}

__device__ __forceinline__ fx_sum warp_sum(fx_sum s) {
  for (int d = 16; d > 0; d >>= 1) {
    s.hi += __shfl_xor_sync(0xffffffffu, s.hi, d);
    s.lo += __shfl_xor_sync(0xffffffffu, s.lo, d);
  }
  return s;
}

// Per warp: its sum and its last contributing id, into sm.warp_hi/lo/last (then synchronized).
__device__ void store_warp_sums(sample_shared& sm, fx_sum s, int32_t last) {
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

__device__ void write_bad_row(const sample_view& v) {
  if (threadIdx.x == 0) {
    v.ids[blockIdx.x] = -1;
    v.logprobs[blockIdx.x] = NAN;
  }
}

__global__ void __launch_bounds__(kSampleThreads) sample_rows_kernel(const sample_view v) {
  __shared__ sample_shared sm;
  const sample_row_params p = v.rows[blockIdx.x];
  const auto n = static_cast<int32_t>(v.vocab);
  const float* raw = v.logits + static_cast<int64_t>(p.logits_row) * v.vocab;  // [vocab]
  float* adj = p.work_slot >= 0 ? v.workspace + 2 * static_cast<int64_t>(p.work_slot) * v.vocab : nullptr;
  float* wts = adj != nullptr ? adj + v.vocab : nullptr;  // [vocab] each
  const bool greedy = p.temperature < kGreedyTemperature;
  const bool penalized = p.penalty_end > p.penalty_begin;
  const segment seg = warp_segment(n);
  const int lane = threadIdx.x & 31;
  if ((!greedy || penalized) && adj == nullptr) return write_bad_row(v);  // the host gave it no workspace

  // 1. Raw logits: the logprobs' log-sum-exp, the argmax; adj = logits (greedy) or logits / temperature.
  {
    max_state s{-INFINITY, INT32_MAX, 0.0f, 0};
    for (int32_t i = seg.begin + lane; i < seg.end; i += 32) {
      const float x = raw[i];
      max_push(s, x, i);
      if (adj != nullptr) adj[i] = greedy ? x : __fdiv_rn(x, p.temperature);
    }
    block_max(sm, s, true);
  }
  if (sm.bad) return write_bad_row(v);
  const double lse = sm.lse;

  // Top raw logprobs: the num_top-th best by a radix select, then every token at or before it.
  if (p.num_top > 0) {
    const auto raw_key = [raw](int32_t i) { return rank_key(raw[i]); };
    const uint32_t k = static_cast<uint32_t>(min(p.num_top, n));
    uint32_t t = 0, m = 0;
    select_by_count(sm, n, raw_key, k, t, m);
    const int32_t c = nth_with_key(sm, n, raw_key, t, m);
    if (threadIdx.x == 0) sm.top_n = 0;
    __syncthreads();
    for (int32_t i = seg.begin + lane; i < seg.end; i += 32) {
      const uint32_t key = raw_key(i);
      if (at_or_before(key, i, t, c)) {
        const uint32_t slot = atomicAdd(&sm.top_n, 1u);
        if (slot < static_cast<uint32_t>(kSampleMaxTop)) {
          sm.top_key[slot] = key;
          sm.top_id[slot] = i;
        }
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const int cnt = min(static_cast<int>(sm.top_n), kSampleMaxTop);
      for (int a = 1; a < cnt; ++a) {  // at most 20: insertion sort into rank order
        const uint32_t ka = sm.top_key[a];
        const int32_t ia = sm.top_id[a];
        int b = a;
        for (; b > 0 && (sm.top_key[b - 1] < ka || (sm.top_key[b - 1] == ka && sm.top_id[b - 1] > ia)); --b) {
          sm.top_key[b] = sm.top_key[b - 1];
          sm.top_id[b] = sm.top_id[b - 1];
        }
        sm.top_key[b] = ka;
        sm.top_id[b] = ia;
      }
      for (int j = 0; j < cnt; ++j) {
        v.top_ids[blockIdx.x * kSampleMaxTop + j] = sm.top_id[j];
        v.top_logprobs[blockIdx.x * kSampleMaxTop + j] =
            static_cast<float>(static_cast<double>(key_value(sm.top_key[j])) - lse);
      }
    }
  }

  // 2. Penalties (sampler's apply_penalties, op for op: no contraction into FMAs), then the maximum.
  float adj_max;
  int32_t adj_arg;
  if (penalized) {
    __syncthreads();
    for (int32_t j = p.penalty_begin + static_cast<int32_t>(threadIdx.x); j < p.penalty_end;
         j += kSampleThreads) {
      const int32_t id = v.penalty_ids[j];
      const int32_t count = v.penalty_counts[j];
      float a = raw[id];
      if (p.repetition_penalty != 1.0f)
        a = a > 0.0f ? __fdiv_rn(a, p.repetition_penalty) : __fmul_rn(a, p.repetition_penalty);
      if (count > 0 && (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f)) {
        a = __fsub_rn(a, __fmul_rn(p.frequency_penalty, static_cast<float>(count)));
        a = __fsub_rn(a, p.presence_penalty);
      }
      adj[id] = greedy ? a : __fdiv_rn(a, p.temperature);
    }
    __syncthreads();
    max_state s{-INFINITY, INT32_MAX, 0.0f, 0};
    for (int32_t i = seg.begin + lane; i < seg.end; i += 32) {
      const float a = adj[i];
      if (a > s.best) {  // no sum needed: only the maximum and its first id
        s.best = a;
        s.id = i;
      }
    }
    block_max(sm, s, false);
    adj_max = sm.adj_max;
    adj_arg = sm.adj_arg;
  } else {
    adj_max = greedy ? sm.row_max : __fdiv_rn(sm.row_max, p.temperature);  // division is monotone
    adj_arg = sm.row_arg;
  }
  int32_t chosen = -1;
  if (greedy) {
    chosen = adj_arg;
  } else if (isfinite(adj_max)) {
    const auto adj_key = [adj](int32_t i) { return rank_key(adj[i]); };
    // 3. top-k: the k-th best, (tk, ck).
    const bool top_k = p.top_k > 0 && p.top_k < n;
    uint32_t tk = 0;
    int32_t ck = n;
    if (top_k) {
      uint32_t m = 0;
      select_by_count(sm, n, adj_key, static_cast<uint32_t>(p.top_k), tk, m);
      ck = nth_with_key(sm, n, adj_key, tk, m);
    }
    // 4. Weights of the top-k survivors; their sum (for top-p), or the kept sum per warp (no top-p).
    const bool top_p = p.top_p < 1.0f;
    fx_sum all{0, 0}, kept{0, 0};
    int32_t last = -1;
    for (int32_t i = seg.begin + lane; i < seg.end; i += 32) {
      const float a = adj[i];
      const float w = !top_k || at_or_before(rank_key(a), i, tk, ck) ? sampling_weight(a, adj_max) : 0.0f;
      wts[i] = w;
      if (w > 0.0f) {
        const fx_sum f = fx_of(w);
        all = fx_add(all, f);
        if (!top_p && w >= p.min_p) {
          kept = fx_add(kept, f);
          last = i;
        }
      }
    }
    // 5. top-p: the first token in rank order where the cumulative mass reaches top_p * mass, (tp, cp).
    uint32_t tp = 0;
    int32_t cp = n;
    bool cut_p = false;
    if (top_p) {
      store_warp_sums(sm, all, -1);
      if (threadIdx.x == 0) {
        fx_sum total{0, 0};
        for (int w = 0; w < kSampleWarps; ++w) total = fx_add(total, {sm.warp_hi[w], sm.warp_lo[w]});
        const double mass = u128_to_double(fx_value(total)) * kTwoMinus84;
        store_u128(sm, double_to_u128(static_cast<double>(p.top_p) * mass * kTwo84, true));
      }
      __syncthreads();
      const u128 need = load_u128(sm);
      __syncthreads();
      u128 above = 0;
      select_by_mass(sm, n, adj_key, wts, need, tp, above);
      if (sm.sel_ok) {
        // Every token of the group tp weighs the same: the m-th lowest id reaches the mass.
        const fx_sum wf = fx_of(sampling_weight(key_value(tp), adj_max));
        const u128 left = need - above, wv = fx_value(wf);
        auto times = [&wf](unsigned long long m) {
          return (static_cast<u128>(wf.hi * m) << kHalfBits) + static_cast<u128>(wf.lo * m);
        };
        unsigned long long m = 1;
        if (wv > 0) {
          const double est = ceil(u128_to_double(left) / u128_to_double(wv));
          m = static_cast<unsigned long long>(fmin(fmax(est, 1.0), static_cast<double>(n)));
          while (m > 1 && times(m - 1) >= left) --m;
          while (m < static_cast<unsigned long long>(n) && times(m) < left) ++m;
        }
        cp = nth_with_key(sm, n, adj_key, tp, static_cast<uint32_t>(m));
        cut_p = cp >= 0;
      }
      for (int32_t i = seg.begin + lane; i < seg.end; i += 32) {
        const float w = wts[i];
        if (w > 0.0f && w >= p.min_p && (!cut_p || at_or_before(adj_key(i), i, tp, cp))) {
          kept = fx_add(kept, fx_of(w));
          last = i;
        }
      }
    }
    // 6. The inverse-CDF walk in ascending id order: the first kept token whose cumulative weight exceeds
    //    u * total.
    store_warp_sums(sm, kept, last);
    if (threadIdx.x == 0) {
      fx_sum total{0, 0};
      int32_t last_kept = -1;
      for (int w = 0; w < kSampleWarps; ++w) {
        total = fx_add(total, {sm.warp_hi[w], sm.warp_lo[w]});
        last_kept = max(last_kept, sm.warp_last[w]);
      }
      const double total_d = u128_to_double(fx_value(total)) * kTwoMinus84;
      const u128 target =
          double_to_u128(troupe::rng::uniform_double(p.seed, p.step) * total_d * kTwo84, false);
      sm.sel_warp = -1;
      sm.sel_id = last_kept;  // the CPU's fallback; exact sums always cross before the end
      u128 before = 0;
      for (int w = 0; w < kSampleWarps; ++w) {
        const u128 c = fx_value({sm.warp_hi[w], sm.warp_lo[w]});
        if (before + c > target) {
          sm.sel_warp = w;
          store_u128(sm, target - before);
          break;
        }
        before += c;
      }
    }
    __syncthreads();
    if (static_cast<int>(threadIdx.x >> 5) == sm.sel_warp) {
      const u128 target = load_u128(sm);
      u128 before = 0;
      for (int32_t base = seg.begin; base < seg.end; base += 32) {
        const int32_t i = base + lane;
        fx_sum f{0, 0};
        if (i < seg.end) {
          const float w = wts[i];
          if (w > 0.0f && w >= p.min_p && (!cut_p || at_or_before(adj_key(i), i, tp, cp))) f = fx_of(w);
        }
        fx_sum incl = f;
        for (int d = 1; d < 32; d <<= 1) {
          const unsigned long long oh = __shfl_up_sync(0xffffffffu, incl.hi, d);
          const unsigned long long ol = __shfl_up_sync(0xffffffffu, incl.lo, d);
          if (lane >= d) incl = fx_add(incl, {oh, ol});
        }
        const uint32_t crossed = __ballot_sync(0xffffffffu, before + fx_value(incl) > target);
        if (crossed != 0) {
          if (lane == 0) sm.sel_id = base + __ffs(crossed) - 1;
          break;
        }
        before += fx_value({__shfl_sync(0xffffffffu, incl.hi, 31), __shfl_sync(0xffffffffu, incl.lo, 31)});
      }
    }
    __syncthreads();
    chosen = sm.sel_id;
  }
  if (threadIdx.x == 0) {
    v.ids[blockIdx.x] = chosen;
    v.logprobs[blockIdx.x] = chosen >= 0 ? static_cast<float>(static_cast<double>(raw[chosen]) - lse) : NAN;
  }
}

}  // namespace

void sample_rows(sample_view v, cudaStream_t stream) {
  if (v.num_rows == 0) return;
  TROUPE_KERNEL_REQUIRE(v.vocab > 0 && v.vocab <= kSampleMaxVocab,
                        "sample_rows: vocab " << v.vocab << " outside [1, " << kSampleMaxVocab << "]");
  TROUPE_KERNEL_REQUIRE(v.num_rows <= INT32_MAX, "sample_rows: " << v.num_rows << " rows");
  sample_rows_kernel<<<static_cast<unsigned>(v.num_rows), kSampleThreads, 0, stream>>>(v);
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels::cuda
