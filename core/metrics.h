// Prometheus metrics: a thread-safe registry of counters, gauges and histograms (with label sets) that
// renders the text exposition format 0.0.4. prometheus-cpp is not packaged in Debian 12, hence our own.
//
// Recording is cheap and allocation-free: a counter/gauge/histogram is a few atomics, and a labelled child
// is looked up (and created, allocating once) by the caller ahead of the hot loop, which then keeps the
// reference. References stay valid for the registry's lifetime.
//
//   auto& m = troupe::global_engine_metrics();
//   m.ttft.observe(0.042);            // seconds
//   m.generation_tokens.inc(3);
//   m.requests_finished("stop").inc();
//   m.kv_cache_usage.set(0.37);
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {
namespace metrics {

// Monotonic; rendered as <name>_total (the family name must end in _total).
class counter {
 public:
  void inc(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void inc(double d = 1);
  void dec(double d = 1) { inc(-d); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Fixed upper bounds chosen at registration; observe() is a search plus three atomic adds.
class histogram {
 public:
  explicit histogram(std::vector<double> bounds);  // ascending, finite; +Inf is implicit
  void observe(double v);

  const std::vector<double>& bounds() const { return bounds_; }
  // Per-bucket (not cumulative) counts; bounds().size() + 1 of them, the last one for +Inf.
  std::vector<uint64_t> bucket_counts() const;
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // [bounds_.size() + 1]
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0};
};

enum class metric_type { counter, gauge, histogram };

// One metric name with its label names; children are the label-value combinations.
template <typename T>
class family {
 public:
  // The child for these label values (as many as label names), created on first use.
  T& with(const std::vector<std::string>& label_values);
  // The unlabelled child (families without labels).
  T& get() { return with({}); }

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  // Children in creation order, under the family's lock.
  template <typename F>
  void for_each(F&& f) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& c : children_) f(c.first, *c.second);
  }

 private:
  friend class registry;
  family(std::string name, std::string help, std::vector<std::string> label_names, std::vector<double> bounds)
      : name_(std::move(name)),
        help_(std::move(help)),
        label_names_(std::move(label_names)),
        bounds_(std::move(bounds)) {}

  std::string name_, help_;
  std::vector<std::string> label_names_;
  std::vector<double> bounds_;  // histograms only
  mutable std::mutex mu_;
  std::map<std::vector<std::string>, T*> index_;
  std::deque<std::pair<std::vector<std::string>, std::unique_ptr<T>>> children_;
};

// Registering a name again with the same type, labels (and buckets) returns the existing family, so two
// components (or two servers in one test process) can share names; a clash of any kind throws
// troupe::error. Names must match [a-zA-Z_:][a-zA-Z0-9_:]*.
class registry {
 public:
  family<counter>& counter_family(const std::string& name, const std::string& help,
                                  std::vector<std::string> label_names = {});
  family<gauge>& gauge_family(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names = {});
  family<histogram>& histogram_family(const std::string& name, const std::string& help,
                                      std::vector<double> bounds, std::vector<std::string> label_names = {});

  counter& make_counter(const std::string& name, const std::string& help) {
    return counter_family(name, help).get();
  }
  gauge& make_gauge(const std::string& name, const std::string& help) {
    return gauge_family(name, help).get();
  }
  histogram& make_histogram(const std::string& name, const std::string& help, std::vector<double> bounds) {
    return histogram_family(name, help, std::move(bounds)).get();
  }

  // The text exposition format 0.0.4, families in registration order.
  std::string render() const;

 private:
  struct entry {
    metric_type type;
    void* fam;  // family<counter|gauge|histogram>*
  };
  template <typename T>
  family<T>& add(metric_type type, const std::string& name, const std::string& help,
                 std::vector<std::string> label_names, std::vector<double> bounds);

  mutable std::mutex mu_;
  std::vector<std::string> order_;
  std::map<std::string, entry> entries_;
  std::deque<std::unique_ptr<family<counter>>> counters_;
  std::deque<std::unique_ptr<family<gauge>>> gauges_;
  std::deque<std::unique_ptr<family<histogram>>> histograms_;
};

// Bucket layouts in seconds: latency spans 1 ms .. 80 s, steps 0.5 ms .. 5 s.
std::vector<double> latency_buckets();
std::vector<double> step_buckets();

// Shortest text that reads back as v; "+Inf", "-Inf", "NaN" as Prometheus writes them.
std::string format_value(double v);
// Label values: backslash, double quote and newline escaped.
std::string escape_label_value(std::string_view v);

}  // namespace metrics

metrics::registry& global_metrics();

// What the engine records (and dashboards read). Every field is registered in global_metrics().
struct engine_metrics {
  metrics::histogram& ttft;                     // troupe_time_to_first_token_seconds
  metrics::histogram& inter_token_latency;      // troupe_inter_token_latency_seconds
  metrics::histogram& e2e_latency;              // troupe_e2e_request_latency_seconds
  metrics::histogram& queue_time;               // troupe_request_queue_time_seconds
  metrics::histogram& step_duration;            // troupe_step_duration_seconds
  metrics::counter& prompt_tokens;              // troupe_prompt_tokens_total
  metrics::counter& generation_tokens;          // troupe_generation_tokens_total
  metrics::family<metrics::counter>& requests;  // troupe_requests_total{finish_reason}
  metrics::counter& prefix_cache_hits;          // troupe_prefix_cache_hits_total (tokens)
  metrics::counter& prefix_cache_queries;       // troupe_prefix_cache_queries_total (tokens)
  metrics::counter& preemptions;                // troupe_preemptions_total
  metrics::gauge& requests_running;             // troupe_requests_running
  metrics::gauge& requests_waiting;             // troupe_requests_waiting
  metrics::gauge& kv_cache_usage;               // troupe_kv_cache_usage_ratio, 0..1

  // troupe_requests_total{finish_reason=reason}; "stop", "length", "abort" and "error" are pre-resolved
  // (no lock, no allocation); other reasons go through the family.
  metrics::counter& requests_finished(std::string_view reason);

  metrics::counter& finished_stop;
  metrics::counter& finished_length;
  metrics::counter& finished_abort;
  metrics::counter& finished_error;
};

engine_metrics& global_engine_metrics();

}  // namespace troupe
