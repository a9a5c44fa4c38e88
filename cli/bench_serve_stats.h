// The figures of `troupe bench serve` as pure functions over per-request outcomes, so they are unit-tested
// without a server. Definitions follow vLLM's benchmark_serving.py, so numbers compare across servers:
// TPOT excludes the first token, ITL is the gap between streamed chunks (several tokens of one engine step
// arrive as one chunk), failed requests count in nothing but `failed`, and goodput is the rate of requests
// that meet every given SLO.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace troupe::cli::bench_serve {

// What one request did, as the client measured it (times from steady_clock at chunk receipt).
struct request_outcome {
  bool success = false;
  std::string error;          // why it failed; empty on success
  int32_t prompt_tokens = 0;  // the server's usage when it reported one, else the dataset's count
  int32_t output_tokens = 0;  // the server's usage when it reported one, else tokens counted in chunks
  int32_t expected_output_tokens = 0;  // max_tokens asked for
  double start_s = 0;                  // when it was sent, seconds since the benchmark started
  double ttft_ms = 0;                  // send -> first chunk with output
  double latency_ms = 0;               // send -> end of the stream
  std::vector<double> itl_ms;          // gaps between consecutive output chunks
};

// numpy.percentile with linear interpolation; p in [0, 100]; 0 for an empty sample.
double percentile(std::vector<double> values, double p);

struct distribution {
  double mean = 0, median = 0, p90 = 0, p99 = 0, std = 0;  // std: population standard deviation
};
distribution summarize(const std::vector<double>& values);

// (latency - ttft) / (output_tokens - 1); none when there is no second token to time.
std::optional<double> tpot_ms(const request_outcome& r);

// Service-level objectives for goodput, each optional; a request is good when it meets all given ones.
struct slo_set {
  std::optional<double> ttft_ms, tpot_ms, e2el_ms;
  bool empty() const { return !ttft_ms && !tpot_ms && !e2el_ms; }
};
// "ttft:200 tpot:50 e2el:2000" (spaces or commas between items; any subset, each at most once).
// Throws troupe::error naming the bad item.
slo_set parse_goodput(const std::string& text);
// Failed requests never meet an SLO; a request without a TPOT (one output token) meets any TPOT SLO.
bool meets_slos(const request_outcome& r, const slo_set& slos);

struct run_summary {
  int32_t completed = 0, failed = 0;
  double duration_s = 0;
  int64_t total_input_tokens = 0, total_output_tokens = 0;
  double request_throughput = 0;          // completed / duration
  std::optional<double> request_goodput;  // good / duration, when SLOs were given
  double output_throughput = 0;           // output tokens / duration
  double total_token_throughput = 0;      // (input + output tokens) / duration
  distribution ttft_ms, tpot_ms, itl_ms, e2el_ms;
};
run_summary summarize_run(const std::vector<request_outcome>& outcomes, double duration_s,
                          const slo_set& slos);

}  // namespace troupe::cli::bench_serve
