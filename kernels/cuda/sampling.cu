// Sampling on the device, so that a step returns a few bytes per sequence instead of a vocabulary-wide row
// of floats: sample_rows, which reproduces sampler::sample. Its radix-select and fixed-point helpers are in
// sampling_select.cuh; the greedy argmax (argmax_logprob) is in argmax.cu.
#include <cfloat>
#include <cmath>

#include "core/rng.h"
#include "core/sampling_weight.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/sampling_select.cuh"

namespace troupe::kernels::cuda {

using namespace detail;

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

constexpr float kGreedyTemperature = 1e-5f;  // sampling_greedy_temperature

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
