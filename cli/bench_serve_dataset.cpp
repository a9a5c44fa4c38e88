#include "cli/bench_serve_dataset.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_file.h"

namespace troupe::cli::bench_serve {

std::pair<int32_t, int32_t> length_bounds(int32_t len, double range_ratio, int32_t min_len) {
  // The tolerance keeps 100 * 1.1 at 110 (it is 110.00000000000001 in doubles).
  const double r = std::clamp(range_ratio, 0.0, 1.0);
  const auto lo = static_cast<int32_t>(std::floor(len * (1.0 - r) + 1e-9));
  const auto hi = static_cast<int32_t>(std::floor(len * (1.0 + r) + 1e-9));
  return {std::max(lo, min_len), std::max(hi, min_len)};
}

std::vector<int32_t> sample_lengths(int32_t len, double range_ratio, int32_t min_len, int32_t n,
                                    std::mt19937_64& rng) {
  const auto [lo, hi] = length_bounds(len, range_ratio, min_len);
  std::uniform_int_distribution<int32_t> dist(lo, hi);
  std::vector<int32_t> out(static_cast<size_t>(std::max(n, 0)));
  for (auto& x : out) x = dist(rng);
  return out;
}

std::vector<sample_request> make_random_requests(int32_t n, int32_t input_len, int32_t output_len,
                                                 double range_ratio, int32_t prefix_len,
                                                 const std::vector<int32_t>& vocab_ids,
                                                 std::mt19937_64& rng) {
  if (vocab_ids.empty()) throw error("bench serve: no token ids to build prompts from");
  std::uniform_int_distribution<size_t> pick(0, vocab_ids.size() - 1);
  std::vector<int32_t> prefix(static_cast<size_t>(std::max(prefix_len, 0)));
  for (auto& id : prefix) id = vocab_ids[pick(rng)];
  // With a prefix the suffix may be empty; without one every prompt needs at least one token.
  const auto input_lens = sample_lengths(input_len, range_ratio, prefix.empty() ? 1 : 0, n, rng);
  const auto output_lens = sample_lengths(output_len, range_ratio, 1, n, rng);
  std::vector<sample_request> out(input_lens.size());
  for (size_t i = 0; i < out.size(); ++i) {
    auto& r = out[i];
    r.prompt_ids = prefix;
    for (int32_t k = 0; k < input_lens[i]; ++k) r.prompt_ids.push_back(vocab_ids[pick(rng)]);
    r.prompt_len = static_cast<int32_t>(r.prompt_ids.size());
    r.output_len = output_lens[i];
  }
  return out;
}

std::vector<prompt_completion> read_sharegpt(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  if (!j.is_array()) throw error(path + ": expected a JSON list of {\"conversations\": [...]} objects");
  std::vector<prompt_completion> out;
  for (const auto& entry : j) {
    if (!entry.is_object() || !entry.contains("conversations")) continue;
    const auto& conv = entry["conversations"];
    if (!conv.is_array() || conv.size() < 2) continue;
    const auto& a = conv[0];
    const auto& b = conv[1];
    if (!a.is_object() || !b.is_object() || !a.contains("value") || !b.contains("value") ||
        !a["value"].is_string() || !b["value"].is_string()) {
      continue;
    }
    out.push_back({a["value"].get<std::string>(), b["value"].get<std::string>()});
  }
  return out;
}

std::vector<sample_request> sample_sharegpt(
    std::vector<prompt_completion> pairs, int32_t n,
    const std::function<int32_t(const std::string&)>& count_prompt,
    const std::function<int32_t(const std::string&)>& count_completion, std::mt19937_64& rng) {
  std::shuffle(pairs.begin(), pairs.end(), rng);
  std::vector<sample_request> kept;
  for (auto& p : pairs) {
    if (static_cast<int32_t>(kept.size()) >= n) break;
    const int32_t prompt_len = count_prompt(p.prompt);
    const int32_t output_len = count_completion(p.completion);
    if (prompt_len < 4 || output_len < 4) continue;
    if (prompt_len > 1024 || prompt_len + output_len > 2048) continue;
    sample_request r;
    r.prompt_text = std::move(p.prompt);
    r.prompt_len = prompt_len;
    r.output_len = output_len;
    kept.push_back(std::move(r));
  }
  if (kept.empty()) {
    throw error(
        "bench serve: no ShareGPT conversation passed the length filter (prompt and reply >= 4 tokens, "
        "prompt <= 1024, both <= 2048)");
  }
  for (size_t i = 0; static_cast<int32_t>(kept.size()) < n; ++i) kept.push_back(kept[i]);
  return kept;
}

std::vector<double> arrival_times(int32_t n, double rate, double burstiness, std::mt19937_64& rng) {
  std::vector<double> out(static_cast<size_t>(std::max(n, 0)), 0.0);
  if (!std::isfinite(rate)) return out;
  // Gamma(shape k, scale theta) has mean k * theta: theta = 1 / (rate * k) keeps the mean gap at 1 / rate.
  std::gamma_distribution<double> gap(burstiness, 1.0 / (rate * burstiness));
  for (size_t i = 1; i < out.size(); ++i) out[i] = out[i - 1] + gap(rng);
  return out;
}

}  // namespace troupe::cli::bench_serve
