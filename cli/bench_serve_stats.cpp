#include "cli/bench_serve_stats.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "core/error.h"

namespace troupe::cli::bench_serve {

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (rank - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

distribution summarize(const std::vector<double>& values) {
  distribution d;
  if (values.empty()) return d;
  double sum = 0;
  for (double v : values) sum += v;
  d.mean = sum / static_cast<double>(values.size());
  double sq = 0;
  for (double v : values) sq += (v - d.mean) * (v - d.mean);
  d.std = std::sqrt(sq / static_cast<double>(values.size()));
  d.median = percentile(values, 50);
  d.p90 = percentile(values, 90);
  d.p99 = percentile(values, 99);
  return d;
}

std::optional<double> tpot_ms(const request_outcome& r) {
  if (!r.success || r.output_tokens < 2) return std::nullopt;
  return (r.latency_ms - r.ttft_ms) / static_cast<double>(r.output_tokens - 1);
}

slo_set parse_goodput(const std::string& text) {
  std::string items = text;
  std::replace(items.begin(), items.end(), ',', ' ');
  std::istringstream in(items);
  slo_set s;
  std::string item;
  bool any = false;
  while (in >> item) {
    const auto colon = item.find(':');
    const std::string name = item.substr(0, colon);
    std::optional<double>* slot = name == "ttft"   ? &s.ttft_ms
                                  : name == "tpot" ? &s.tpot_ms
                                  : name == "e2el" ? &s.e2el_ms
                                                   : nullptr;
    if (!slot || colon == std::string::npos) {
      throw error("--goodput: '" + item + "' is not NAME:MS with NAME one of ttft, tpot, e2el");
    }
    if (*slot) throw error("--goodput: '" + name + "' given twice");
    const std::string value = item.substr(colon + 1);
    errno = 0;
    char* end = nullptr;
    const double ms = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0' || errno != 0 || !std::isfinite(ms) || ms < 0) {
      throw error("--goodput: '" + item + "' needs a non-negative number of milliseconds");
    }
    *slot = ms;
    any = true;
  }
  if (!any) throw error("--goodput needs at least one of ttft:MS tpot:MS e2el:MS");
  return s;
}

bool meets_slos(const request_outcome& r, const slo_set& slos) {
  if (!r.success) return false;
  if (slos.ttft_ms && r.ttft_ms > *slos.ttft_ms) return false;
  if (slos.e2el_ms && r.latency_ms > *slos.e2el_ms) return false;
  if (slos.tpot_ms) {
    if (auto t = tpot_ms(r); t && *t > *slos.tpot_ms) return false;
  }
  return true;
}

run_summary summarize_run(const std::vector<request_outcome>& outcomes, double duration_s,
                          const slo_set& slos) {
  run_summary s;
  s.duration_s = duration_s;
  std::vector<double> ttft, tpot, itl, e2el;
  int32_t good = 0;
  for (const auto& r : outcomes) {
    if (!r.success) {
      ++s.failed;
      continue;
    }
    ++s.completed;
    s.total_input_tokens += r.prompt_tokens;
    s.total_output_tokens += r.output_tokens;
    ttft.push_back(r.ttft_ms);
    e2el.push_back(r.latency_ms);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    if (auto t = tpot_ms(r)) tpot.push_back(*t);
    if (!slos.empty() && meets_slos(r, slos)) ++good;
  }
  // A run that took no measurable time has no meaningful rates; report zeros rather than infinities.
  const double per_s = duration_s > 0 ? 1.0 / duration_s : 0.0;
  s.request_throughput = s.completed * per_s;
  if (!slos.empty()) s.request_goodput = good * per_s;
  s.output_throughput = static_cast<double>(s.total_output_tokens) * per_s;
  s.total_token_throughput = static_cast<double>(s.total_input_tokens + s.total_output_tokens) * per_s;
  s.ttft_ms = summarize(ttft);
  s.tpot_ms = summarize(tpot);
  s.itl_ms = summarize(itl);
  s.e2el_ms = summarize(e2el);
  return s;
}

}  // namespace troupe::cli::bench_serve
