#include "core/sampling.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "core/sampling_weight.h"

namespace troupe {

namespace {

std::string fmt(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// Adds "<field> must be <range> (got <v>)" when v is NaN/inf or outside [lo, hi] (lo open when asked).
void check_float(std::vector<std::string>& out, const char* field, float v, double lo, bool lo_open,
                 double hi, const char* range) {
  const bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && v <= hi;
  if (!ok) out.push_back(std::string(field) + " must be " + range + " (got " + fmt(v) + ")");
}

// The rank order that top-k and top-p cut: higher adjusted logit first, ties by lower id. Token ids
// live in the float scratch (exact below 2^24, checked on entry) so one caller buffer serves for all.
struct ranks_before {
  const float* adj;  // [vocab_size]
  bool operator()(float fa, float fb) const {
    const auto a = static_cast<int32_t>(fa), b = static_cast<int32_t>(fb);
    return adj[a] > adj[b] || (adj[a] == adj[b] && a < b);
  }
};

// log(sum(exp(logits))); also rejects NaN and +inf, which would poison every later step.
double log_sum_exp(const float* logits, int32_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  bool bad = false;  // branch-free scan so the loop vectorizes; the culprit is found only on failure
  for (int32_t i = 0; i < n; ++i) {
    const float x = logits[i];
    bad |= std::isnan(x) | (x == std::numeric_limits<float>::infinity());
    mx = std::max(mx, x);
  }
  if (bad) {
    for (int32_t i = 0; i < n; ++i) {
      TROUPE_CHECK(!std::isnan(logits[i]) && logits[i] != std::numeric_limits<float>::infinity())
          << "logit" << i << "is" << logits[i];
    }
  }
  TROUPE_CHECK(std::isfinite(mx)) << "every logit is -inf";
  // Float exp (half the cost of double over a 256k vocab) summed in double: the float rounding of each
  // term is far below what a float logprob can show.
  double sum = 0;
  for (int32_t i = 0; i < n; ++i) sum += std::exp(logits[i] - mx);
  return mx + std::log(sum);
}

// The p.logprobs best raw tokens, descending, ties by lower id: a bounded heap, O(V log k).
void top_logprobs(const float* logits, int32_t vocab_size, int32_t k, double lse,
                  std::vector<token_logprob>& top) {
  top.clear();
  if (k <= 0) return;
  k = std::min(k, vocab_size);
  top.reserve(k);
  // better(a, b): a outranks b. As the heap's "less", it keeps the worst kept entry at the front.
  auto better = [](const token_logprob& a, const token_logprob& b) {
    return a.logprob > b.logprob || (a.logprob == b.logprob && a.id < b.id);
  };
  for (int32_t i = 0; i < vocab_size; ++i) {
    const token_logprob cand{i, logits[i]};
    if (static_cast<int32_t>(top.size()) < k) {
      top.push_back(cand);
      std::push_heap(top.begin(), top.end(), better);
    } else if (better(cand, top.front())) {
      std::pop_heap(top.begin(), top.end(), better);
      top.back() = cand;
      std::push_heap(top.begin(), top.end(), better);
    }
  }
  std::sort_heap(top.begin(), top.end(), better);
  for (auto& t : top) t.logprob = static_cast<float>(static_cast<double>(t.logprob) - lse);
}

bool at_or_before(const float* adj, int32_t i, int32_t c) {
  return adj[i] > adj[c] || (adj[i] == adj[c] && i <= c);
}

// The m-th token in rank order. nth_element runs on a plain copy of the values: direct float compares
// are several times faster than ranking ids through adj. vals: [vocab_size] scratch.
int32_t mth_best(const float* adj, int32_t vocab_size, int32_t m, float* vals) {
  std::copy(adj, adj + vocab_size, vals);
  std::nth_element(vals, vals + (m - 1), vals + vocab_size, std::greater<float>());
  const float t = vals[m - 1];
  int32_t above = 0;
  for (int32_t i = 0; i < vocab_size; ++i) above += adj[i] > t;
  int32_t ties_left = m - above;  // >= 1: the m-th is the ties_left-th lowest id valued t
  for (int32_t i = 0; i < vocab_size; ++i) {
    if (adj[i] == t && --ties_left == 0) return i;
  }
  TROUPE_CHECK(false) << "unreachable: no" << m << "th best token";
  return -1;
}

// The m best token ids, in rank order. vals: [vocab_size] scratch; ids: [m] output.
void best_ids_sorted(const float* adj, int32_t vocab_size, int32_t m, float* vals, float* ids) {
  const int32_t cut = mth_best(adj, vocab_size, m, vals);
  int32_t n = 0;
  for (int32_t i = 0; i < vocab_size; ++i) {
    if (at_or_before(adj, i, cut)) ids[n++] = static_cast<float>(i);
  }
  TROUPE_CHECK_EQ(n, m);
  std::sort(ids, ids + m, ranks_before{adj});
}

// The last token (in rank order) that top-p keeps among the top-k survivors (k of them; w is 0 for the
// others). w: [vocab_size] unnormalized probabilities; vals, ids: [vocab_size] scratch each.
int32_t top_p_cutoff(const float* adj, const float* w, float* vals, float* ids, int32_t vocab_size, int32_t k,
                     float top_p) {
  double mass = 0;  // of the top-k survivors: top-p cuts the renormalized distribution
  for (int32_t i = 0; i < vocab_size; ++i) mass += w[i];
  const double need = static_cast<double>(top_p) * mass;
  // Sort only as far as the mass requires: the best 64, then 256, ... (each an O(V) selection plus a
  // small sort). Typical top-p stops inside the first 64. The sum runs in rank order whatever the
  // chunking, so the cutoff does not depend on it.
  double cum = 0;
  int32_t summed = 0;
  for (int32_t m = std::min(k, 64);; m = static_cast<int32_t>(std::min<int64_t>(k, 4 * int64_t{m}))) {
    best_ids_sorted(adj, vocab_size, m, vals, ids);
    for (int32_t j = summed; j < m; ++j) {
      cum += w[static_cast<int32_t>(ids[j])];
      if (cum >= need) return static_cast<int32_t>(ids[j]);
    }
    summed = m;
    if (m == k) return static_cast<int32_t>(ids[k - 1]);  // rounding left the sum a hair short
  }
}

}  // namespace

bool sampling_params::is_greedy() const { return temperature < sampling_greedy_temperature; }

bool sampling_params::has_penalties() const {
  return repetition_penalty != 1.0f || frequency_penalty != 0.0f || presence_penalty != 0.0f;
}

std::vector<std::string> sampling_params::validate(int32_t vocab_size) const {
  std::vector<std::string> out;
  check_float(out, "temperature", temperature, 0, false, 100, "in [0, 100] (0 means greedy)");
  if (top_k < -1) {
    out.push_back("top_k must be -1 or 0 (off) or >= 1 (got " + std::to_string(top_k) + ")");
  }
  check_float(out, "top_p", top_p, 0, true, 1, "in (0, 1]");
  check_float(out, "min_p", min_p, 0, false, 1, "in [0, 1]");
  check_float(out, "repetition_penalty", repetition_penalty, 0, true, 10, "in (0, 10]");
  check_float(out, "presence_penalty", presence_penalty, -2, false, 2, "in [-2, 2]");
  check_float(out, "frequency_penalty", frequency_penalty, -2, false, 2, "in [-2, 2]");
  if (logprobs < 0 || logprobs > sampling_max_logprobs) {
    out.push_back("logprobs must be in [0, " + std::to_string(sampling_max_logprobs) + "] (got " +
                  std::to_string(logprobs) + ")");
  }
  if (max_tokens < 1) out.push_back("max_tokens must be >= 1 (got " + std::to_string(max_tokens) + ")");
  if (n < 1 || n > sampling_max_n) {
    out.push_back("n must be in [1, " + std::to_string(sampling_max_n) + "] (got " + std::to_string(n) + ")");
  }
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    const int32_t id = stop_token_ids[i];
    if (id < 0 || id >= vocab_size) {
      out.push_back("stop_token_ids[" + std::to_string(i) + "] must be a token id in [0, " +
                    std::to_string(vocab_size) + ") (got " + std::to_string(id) + ")");
    }
  }
  if (stop.size() > static_cast<size_t>(sampling_max_stop_strings)) {
    out.push_back("stop must hold at most " + std::to_string(sampling_max_stop_strings) + " strings (got " +
                  std::to_string(stop.size()) + ")");
  }
  for (size_t i = 0; i < stop.size(); ++i) {
    if (stop[i].empty()) out.push_back("stop[" + std::to_string(i) + "] must be a non-empty string");
  }
  return out;
}

void apply_penalties(float* adj, int32_t vocab_size, const sampling_params& p,
                     const std::vector<int32_t>& prompt_ids, const std::vector<int32_t>& output_ids,
                     float* work) {
  auto check_id = [vocab_size](int32_t id) {
    TROUPE_CHECK(id >= 0 && id < vocab_size) << "token id" << id << "outside vocab of" << vocab_size;
  };
  if (p.repetition_penalty != 1.0f) {
    std::fill(work, work + vocab_size, 0.0f);  // seen flags
    auto penalize = [&](int32_t id) {
      check_id(id);
      if (work[id] != 0.0f) return;
      work[id] = 1.0f;
      adj[id] = adj[id] > 0 ? adj[id] / p.repetition_penalty : adj[id] * p.repetition_penalty;
    };
    for (int32_t id : prompt_ids) penalize(id);
    for (int32_t id : output_ids) penalize(id);
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    std::fill(work, work + vocab_size, 0.0f);  // output counts (exact in float below 2^24)
    for (int32_t id : output_ids) {
      check_id(id);
      work[id] += 1.0f;
    }
    for (int32_t id : output_ids) {
      const float count = work[id];
      if (count == 0.0f) continue;  // already applied for this token
      adj[id] -= p.frequency_penalty * count;
      adj[id] -= p.presence_penalty;
      work[id] = 0.0f;
    }
  }
}

std::vector<float> log_softmax(const float* logits, int32_t vocab_size) {
  TROUPE_CHECK_GT(vocab_size, 0);
  const double lse = log_sum_exp(logits, vocab_size);
  std::vector<float> out(vocab_size);
  for (int32_t i = 0; i < vocab_size; ++i) out[i] = static_cast<float>(static_cast<double>(logits[i]) - lse);
  return out;
}

sample_result sampler::sample(const float* logits, int32_t vocab_size, const sampling_params& p,
                              const std::vector<int32_t>& prompt_ids, const std::vector<int32_t>& output_ids,
                              uint64_t seed, uint64_t step, std::vector<float>& scratch) const {
  TROUPE_CHECK(vocab_size > 0 && vocab_size <= (1 << 24)) << "vocab_size" << vocab_size;
  const size_t v = static_cast<size_t>(vocab_size);
  if (scratch.size() < 4 * v) scratch.resize(4 * v);
  float* adj = scratch.data();           // [V] penalized (then temperature-scaled) logits
  float* work = scratch.data() + v;      // [V] penalty bookkeeping, then unnormalized probs
  float* vals = scratch.data() + 2 * v;  // [V] selection workspace for top-k / top-p
  float* ids = scratch.data() + 3 * v;   // [V] token ids (as floats), best first, for top-p

  sample_result result;
  const bool want_lse = p.need_logprob || p.logprobs > 0;
  const double lse = want_lse ? log_sum_exp(logits, vocab_size) : 0.0;
  top_logprobs(logits, vocab_size, p.logprobs, lse, result.top);

  const bool penalized = p.has_penalties();
  if (p.is_greedy()) {
    // Without penalties the argmax reads the logits in place: no copy of the row.
    const float* src = logits;
    if (penalized) {
      std::copy(logits, logits + v, adj);
      apply_penalties(adj, vocab_size, p, prompt_ids, output_ids, work);
      src = adj;
    }
    // Two branch-free passes (both vectorize) instead of one compare-and-branch per logit: the
    // maximum (and a NaN check), then the first index holding it, so ties keep the lowest id.
    float mx = src[0];
    bool bad = false;
    int32_t i = 0;
#if defined(__SSE2__)
    {
      // Eight logits per iteration in two SSE registers; cmpunord flags a NaN in either.
      __m128 m0 = _mm_set1_ps(src[0]), m1 = m0, nan = _mm_setzero_ps();
      for (; i + 8 <= vocab_size; i += 8) {
        const __m128 a = _mm_loadu_ps(src + i), b = _mm_loadu_ps(src + i + 4);
        m0 = _mm_max_ps(m0, a);
        m1 = _mm_max_ps(m1, b);
        nan = _mm_or_ps(nan, _mm_cmpunord_ps(a, b));
      }
      alignas(16) float lanes[4];
      _mm_store_ps(lanes, _mm_max_ps(m0, m1));
      for (float x : lanes) mx = x > mx ? x : mx;
      bad = _mm_movemask_ps(nan) != 0;
    }
#endif
    for (; i < vocab_size; ++i) {
      bad |= std::isnan(src[i]);
      mx = src[i] > mx ? src[i] : mx;
    }
    TROUPE_CHECK(!bad) << "a logit is NaN";
    int32_t best = 0;
    while (src[best] != mx) ++best;
    result.id = best;
  } else {
    std::copy(logits, logits + v, adj);
    apply_penalties(adj, vocab_size, p, prompt_ids, output_ids, work);
    float mx = -std::numeric_limits<float>::infinity();
    for (size_t i = 0; i < v; ++i) {
      adj[i] /= p.temperature;
      mx = std::max(mx, adj[i]);
    }
    TROUPE_CHECK(std::isfinite(mx)) << "every penalized logit is -inf or the maximum overflowed:" << mx;
    // Top-k first, on the logits alone, so that exp runs only for its survivors (the others get w = 0).
    const int32_t k = (p.top_k > 0 && p.top_k < vocab_size) ? p.top_k : vocab_size;
    int32_t cutoff = k < vocab_size ? mth_best(adj, vocab_size, k, vals) : -1;  // last kept, rank order
    // Unnormalized probabilities (the maximum has w == 1 exactly), computed as the CUDA sampler does.
    float* w = work;
    if (cutoff < 0) {
      for (size_t i = 0; i < v; ++i) w[i] = sampling_weight(adj[i], mx);
    } else {
      for (int32_t i = 0; i < vocab_size; ++i)
        w[i] = at_or_before(adj, i, cutoff) ? sampling_weight(adj[i], mx) : 0.0f;
    }
    if (p.top_p < 1.0f) cutoff = top_p_cutoff(adj, w, vals, ids, vocab_size, k, p.top_p);
    const ranks_before rank{adj};
    // min-p compares prob / max prob, which is w itself; renormalizing by top-k/top-p leaves the
    // ratio, and so this test, unchanged.
    const float min_w = p.min_p;
    auto kept = [&](int32_t i) {
      return w[i] >= min_w &&
             (cutoff < 0 || i == cutoff || rank(static_cast<float>(i), static_cast<float>(cutoff)));
    };
    double total = 0;
    for (int32_t i = 0; i < vocab_size; ++i) {
      if (kept(i)) total += w[i];
    }
    const double target = rng::uniform_double(seed, step) * total;
    double cum = 0;
    int32_t chosen = -1;
    for (int32_t i = 0; i < vocab_size; ++i) {
      if (!kept(i) || w[i] == 0.0f) continue;
      cum += w[i];
      chosen = i;  // also the fallback when rounding leaves cum a hair below target at the end
      if (cum > target) break;
    }
    TROUPE_CHECK_GE(chosen, 0) << "no token survived sampling";
    result.id = chosen;
  }
  result.logprob = want_lse ? static_cast<float>(static_cast<double>(logits[result.id]) - lse) : 0.0f;
  return result;
}

}  // namespace troupe
