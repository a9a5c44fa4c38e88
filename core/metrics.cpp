#include "core/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <sstream>

#include "core/error.h"

namespace troupe {
namespace metrics {

namespace {

// C++17 has no atomic<double>::fetch_add; a CAS loop is lock-free and allocation-free.
void atomic_add(std::atomic<double>& a, double d) {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + d, std::memory_order_relaxed)) {
  }
}

bool valid_metric_name(const std::string& s) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool valid_label_name(const std::string& s) {
  if (s.empty() || s.rfind("__", 0) == 0) return false;  // "__" prefixes are reserved
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

std::string escape_help(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// {a="x",b="y"} plus an optional extra label (le for buckets); "" when there are none.
std::string label_text(const std::vector<std::string>& names, const std::vector<std::string>& values,
                       const char* extra_name = nullptr, const std::string& extra_value = "") {
  if (names.empty() && !extra_name) return "";
  std::string out = "{";
  for (size_t i = 0; i < names.size(); ++i) {
    if (i) out += ',';
    out += names[i] + "=\"" + escape_label_value(values[i]) + "\"";
  }
  if (extra_name) {
    if (!names.empty()) out += ',';
    out += std::string(extra_name) + "=\"" + extra_value + "\"";
  }
  return out + "}";
}

const char* type_name(metric_type t) {
  switch (t) {
    case metric_type::counter:
      return "counter";
    case metric_type::gauge:
      return "gauge";
    case metric_type::histogram:
      return "histogram";
  }
  return "untyped";
}

}  // namespace

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, res.ptr);
}

std::string escape_label_value(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void gauge::inc(double d) { atomic_add(value_, d); }

histogram::histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    TROUPE_CHECK(std::isfinite(bounds_[i])) << "histogram bound" << i << "is not finite";
    if (i) {
      TROUPE_CHECK_LT(bounds_[i - 1], bounds_[i]) << "histogram bounds must ascend";
    }
  }
  buckets_.reset(new std::atomic<uint64_t>[bounds_.size() + 1]);
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void histogram::observe(double v) {
  // Prometheus buckets are "le": the first bound >= v.
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  atomic_add(sum_, v);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> histogram::bucket_counts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  for (size_t i = 0; i < out.size(); ++i) out[i] = buckets_[i].load(std::memory_order_relaxed);
  return out;
}

template <typename T>
T& family<T>::with(const std::vector<std::string>& label_values) {
  TROUPE_CHECK_EQ(label_values.size(), label_names_.size()) << "label values for" << name_;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(label_values);
  if (it != index_.end()) return *it->second;
  std::unique_ptr<T> child;
  if constexpr (std::is_same_v<T, histogram>) {
    child = std::make_unique<T>(bounds_);
  } else {
    child = std::make_unique<T>();
  }
  T* raw = child.get();
  children_.emplace_back(label_values, std::move(child));
  index_.emplace(label_values, raw);
  return *raw;
}

template class family<counter>;
template class family<gauge>;
template class family<histogram>;

template <typename T>
family<T>& registry::add(metric_type type, const std::string& name, const std::string& help,
                         std::vector<std::string> label_names, std::vector<double> bounds) {
  if (!valid_metric_name(name)) throw error("metric name '" + name + "' is not a valid Prometheus name");
  if (type == metric_type::counter && (name.size() < 6 || name.compare(name.size() - 6, 6, "_total") != 0)) {
    throw error("counter '" + name + "' must end in _total");
  }
  for (const auto& l : label_names) {
    if (!valid_label_name(l)) throw error("metric " + name + ": label name '" + l + "' is not valid");
    if (type == metric_type::histogram && l == "le")
      throw error("metric " + name + ": label 'le' is reserved");
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  if (it != entries_.end()) {
    auto* fam = static_cast<family<T>*>(it->second.fam);
    if (it->second.type != type || fam->label_names() != label_names || fam->bounds_ != bounds) {
      throw error("metric " + name + " registered twice with different types, labels or buckets");
    }
    return *fam;
  }
  auto fam = std::unique_ptr<family<T>>(new family<T>(name, help, std::move(label_names), std::move(bounds)));
  family<T>* raw = fam.get();
  if constexpr (std::is_same_v<T, counter>) {
    counters_.push_back(std::move(fam));
  } else if constexpr (std::is_same_v<T, gauge>) {
    gauges_.push_back(std::move(fam));
  } else {
    histograms_.push_back(std::move(fam));
  }
  entries_.emplace(name, entry{type, raw});
  order_.push_back(name);
  return *raw;
}

family<counter>& registry::counter_family(const std::string& name, const std::string& help,
                                          std::vector<std::string> label_names) {
  return add<counter>(metric_type::counter, name, help, std::move(label_names), {});
}

family<gauge>& registry::gauge_family(const std::string& name, const std::string& help,
                                      std::vector<std::string> label_names) {
  return add<gauge>(metric_type::gauge, name, help, std::move(label_names), {});
}

family<histogram>& registry::histogram_family(const std::string& name, const std::string& help,
                                              std::vector<double> bounds,
                                              std::vector<std::string> label_names) {
  histogram check(bounds);  // validates the bounds before anything is registered
  (void)check;
  return add<histogram>(metric_type::histogram, name, help, std::move(label_names), std::move(bounds));
}

std::string registry::render() const {
  std::ostringstream os;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& name : order_) {
    const entry& e = entries_.at(name);
    auto header = [&](const std::string& help) {
      os << "# HELP " << name << ' ' << escape_help(help) << '\n';
      os << "# TYPE " << name << ' ' << type_name(e.type) << '\n';
    };
    if (e.type == metric_type::counter) {
      const auto& fam = *static_cast<const family<counter>*>(e.fam);
      header(fam.help());
      fam.for_each([&](const std::vector<std::string>& values, const counter& c) {
        os << name << label_text(fam.label_names(), values) << ' ' << c.value() << '\n';
      });
    } else if (e.type == metric_type::gauge) {
      const auto& fam = *static_cast<const family<gauge>*>(e.fam);
      header(fam.help());
      fam.for_each([&](const std::vector<std::string>& values, const gauge& g) {
        os << name << label_text(fam.label_names(), values) << ' ' << format_value(g.value()) << '\n';
      });
    } else {
      const auto& fam = *static_cast<const family<histogram>*>(e.fam);
      header(fam.help());
      fam.for_each([&](const std::vector<std::string>& values, const histogram& h) {
        // Read the count first and derive +Inf from the buckets, so le="+Inf" always equals _count even
        // while observations race the scrape.
        const std::vector<uint64_t> counts = h.bucket_counts();
        uint64_t cumulative = 0;
        for (size_t i = 0; i < counts.size(); ++i) {
          cumulative += counts[i];
          const std::string le = i < h.bounds().size() ? format_value(h.bounds()[i]) : "+Inf";
          os << name << "_bucket" << label_text(fam.label_names(), values, "le", le) << ' ' << cumulative
             << '\n';
        }
        os << name << "_sum" << label_text(fam.label_names(), values) << ' ' << format_value(h.sum()) << '\n';
        os << name << "_count" << label_text(fam.label_names(), values) << ' ' << cumulative << '\n';
      });
    }
  }
  return os.str();
}

std::vector<double> latency_buckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,
          0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
}

std::vector<double> step_buckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0};
}

}  // namespace metrics

metrics::registry& global_metrics() {
  static metrics::registry* r = new metrics::registry();  // never destroyed: engine threads may outlive main
  return *r;
}

namespace {

engine_metrics make_engine_metrics(metrics::registry& r) {
  auto lat = metrics::latency_buckets();
  auto& requests =
      r.counter_family("troupe_requests_total", "Finished requests by finish reason.", {"finish_reason"});
  r.gauge_family("troupe_build_info", "Build information; the value is always 1.", {"version"})
      .with({TROUPE_VERSION})
      .set(1);
  return engine_metrics{
      r.make_histogram("troupe_time_to_first_token_seconds", "Time from arrival to the first token.", lat),
      r.make_histogram("troupe_inter_token_latency_seconds", "Time between consecutive tokens of a sequence.",
                       lat),
      r.make_histogram("troupe_e2e_request_latency_seconds", "Time from arrival to the last token.", lat),
      r.make_histogram("troupe_request_queue_time_seconds", "Time from arrival to first being scheduled.",
                       lat),
      r.make_histogram("troupe_step_duration_seconds", "Duration of one engine step.",
                       metrics::step_buckets()),
      r.make_counter("troupe_prompt_tokens_total", "Prompt tokens processed."),
      r.make_counter("troupe_generation_tokens_total", "Tokens generated."),
      requests,
      r.make_counter("troupe_prefix_cache_hits_total", "Prompt tokens found in the prefix cache."),
      r.make_counter("troupe_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache."),
      r.make_counter("troupe_preemptions_total", "Sequences preempted to free KV cache."),
      r.make_gauge("troupe_requests_running", "Requests being computed."),
      r.make_gauge("troupe_requests_waiting", "Requests waiting to be scheduled."),
      r.make_gauge("troupe_kv_cache_usage_ratio", "Fraction of KV cache blocks in use, 0 to 1."),
      requests.with({"stop"}),
      requests.with({"length"}),
      requests.with({"abort"}),
      requests.with({"error"}),
  };
}

}  // namespace

metrics::counter& engine_metrics::requests_finished(std::string_view reason) {
  if (reason == "stop") return finished_stop;
  if (reason == "length") return finished_length;
  if (reason == "abort") return finished_abort;
  if (reason == "error") return finished_error;
  return requests.with({std::string(reason)});
}

engine_metrics& global_engine_metrics() {
  static engine_metrics* m = new engine_metrics(make_engine_metrics(global_metrics()));
  return *m;
}

}  // namespace troupe
