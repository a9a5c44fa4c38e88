// troupe bench serve: a serving benchmark against a running server, with the figures and the output of
// vLLM's benchmark_serving.py so results compare across servers. Requests arrive as a Poisson (or gamma)
// process, stream back over SSE or WebSocket, and are timed at chunk receipt (cli/bench_serve_client.h);
// the figures are pure functions of the outcomes (cli/bench_serve_stats.h). docs/bench-serve.md.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/bench.h"
#include "cli/bench_serve_client.h"
#include "cli/bench_serve_dataset.h"
#include "cli/bench_serve_stats.h"
#include "core/error.h"
#include "core/tokenizer.h"

namespace troupe::cli::bench_serve {
namespace {

using json = nlohmann::json;
using steady = std::chrono::steady_clock;

const char* kHelp = R"(usage: troupe bench serve [options]

Sends requests to a running troupe (or any OpenAI-compatible) server and reports TTFT, TPOT, ITL,
end-to-end latency and throughput, like vLLM's benchmark_serving.py. See docs/bench-serve.md.

  --base-url URL          server (default http://127.0.0.1:8000)
  --backend openai|ws     /v1/completions streamed over SSE, or the /v1/ws protocol (default openai)
  --model NAME            default: the first model of GET /v1/models
  --api-key KEY           default: $TROUPE_API_KEY
  --num-prompts N         requests to send (default 1000)
  --request-rate R        requests/s, or inf to send all at once (default inf)
  --burstiness B          gamma shape of the gaps between arrivals; 1 is Poisson (default 1)
  --max-concurrency N     most requests in flight at once (default: no limit)
  --seed S                dataset and arrival seed (default 0)
  --dataset random|prefix|sharegpt
  --input-len N --output-len N --range-ratio R
                          random lengths uniform in [len*(1-R), len*(1+R)] (defaults 1024, 128, 0)
  --prefix-len N          shared prefix before the random part (prefix dataset default 256)
  --dataset-path FILE     ShareGPT JSON (sharegpt dataset)
  --tokenizer DIR         a model directory with tokenizer.json: token counts for sharegpt (required
                          there) and the id range of random prompts (default ids 100..999)
  --goodput ttft:MS tpot:MS e2el:MS
                          service-level objectives; reports the rate of requests meeting all of them
  --json FILE             write the full record (config, summary, every request)
  --io-threads N          client io threads (default 2)
  --ws-connections N      sockets the ws backend spreads requests over (default 4)
  --timeout S             longest silence allowed while a request waits (default 300)
  --request-timeout S     longest a request may take, send to end of stream; past it the request
                          fails, naming its id and backend (default 600)
)";

// Ids 100..999 are ordinary tokens in any vocabulary of 1000 or more (the embedded model has 1024):
// low ids are where tokenizers keep their special tokens.
constexpr int32_t kDefaultIdLo = 100, kDefaultIdHi = 1000;

struct settings {
  std::string base_url, backend, model, api_key, dataset, dataset_path, tokenizer_dir, json_path,
      goodput_text;
  int32_t num_prompts = 1000, max_concurrency = 0, input_len = 1024, output_len = 128, prefix_len = 0;
  int32_t io_threads = 2, ws_connections = 4, timeout_s = 300;
  double request_rate = std::numeric_limits<double>::infinity(), burstiness = 1.0, range_ratio = 0.0;
  double request_timeout_s = 600;
  uint64_t seed = 0;
  slo_set slos;
};

// vLLM takes `--goodput ttft:200 tpot:50` as several words; the flag parser takes one value per flag.
std::vector<std::string> join_goodput_words(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    out.push_back(args[i]);
    if (args[i] != "--goodput") continue;
    std::string joined;
    while (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0)
      joined += (joined.empty() ? "" : " ") + args[++i];
    if (!joined.empty()) out.push_back(joined);
  }
  return out;
}

int32_t int_flag(const arg_parser& ap, const std::string& name, int32_t def, int32_t min) {
  const int64_t v = ap.get_int(name).value_or(def);
  if (v < min || v > INT32_MAX) throw error("--" + name + " must be >= " + std::to_string(min));
  return static_cast<int32_t>(v);
}

settings parse_settings(const std::vector<std::string>& args) {
  arg_parser ap(
      "bench serve",
      {"base-url",    "backend",         "model",        "api-key",        "num-prompts", "request-rate",
       "burstiness",  "max-concurrency", "seed",         "dataset",        "input-len",   "output-len",
       "range-ratio", "prefix-len",      "dataset-path", "tokenizer",      "goodput",     "json",
       "io-threads",  "ws-connections",  "timeout",      "request-timeout"},
      {});
  ap.parse(join_goodput_words(args));
  settings s;
  s.base_url = ap.get_or("base-url", "http://127.0.0.1:8000");
  s.backend = ap.get_or("backend", "openai");
  if (s.backend != "openai" && s.backend != "ws") throw error("--backend must be openai or ws");
  s.model = ap.get_or("model", "");
  const char* env_key = std::getenv("TROUPE_API_KEY");
  s.api_key = ap.get_or("api-key", env_key ? env_key : "");
  s.dataset = ap.get_or("dataset", "random");
  if (s.dataset != "random" && s.dataset != "prefix" && s.dataset != "sharegpt") {
    throw error("--dataset must be random, prefix or sharegpt");
  }
  s.dataset_path = ap.get_or("dataset-path", "");
  s.tokenizer_dir = ap.get_or("tokenizer", "");
  s.json_path = ap.get_or("json", "");
  s.num_prompts = int_flag(ap, "num-prompts", 1000, 1);
  if (ap.has("max-concurrency")) s.max_concurrency = int_flag(ap, "max-concurrency", 0, 1);
  s.prefix_len = int_flag(ap, "prefix-len", s.dataset == "prefix" ? 256 : 0, s.dataset == "prefix" ? 1 : 0);
  s.input_len = int_flag(ap, "input-len", 1024, s.prefix_len > 0 ? 0 : 1);
  s.output_len = int_flag(ap, "output-len", 128, 1);
  s.io_threads = int_flag(ap, "io-threads", 2, 1);
  s.ws_connections = int_flag(ap, "ws-connections", 4, 1);
  s.timeout_s = int_flag(ap, "timeout", 300, 1);
  s.request_timeout_s = ap.get_double("request-timeout").value_or(600.0);
  // At most ~a year, so that the deadline stays far from steady_clock's overflow.
  if (!(s.request_timeout_s >= 0.001 && s.request_timeout_s <= 3.2e7)) {
    throw error("--request-timeout must be a number of seconds in [0.001, 3.2e7]");
  }
  s.seed = static_cast<uint64_t>(ap.get_int("seed").value_or(0));
  if (auto r = ap.get("request-rate"); r && *r != "inf") {
    s.request_rate = ap.get_double("request-rate").value();
    if (s.request_rate <= 0) throw error("--request-rate must be > 0 (or inf)");
  }
  s.burstiness = ap.get_double("burstiness").value_or(1.0);
  if (s.burstiness <= 0) throw error("--burstiness must be > 0");
  s.range_ratio = ap.get_double("range-ratio").value_or(0.0);
  if (s.range_ratio < 0 || s.range_ratio >= 1) throw error("--range-ratio must be in [0, 1)");
  if (ap.has("goodput")) {
    s.goodput_text = *ap.get("goodput");
    s.slos = parse_goodput(s.goodput_text);
  }
  if (s.dataset == "sharegpt" && (s.dataset_path.empty() || s.tokenizer_dir.empty())) {
    throw error("--dataset sharegpt needs --dataset-path FILE and --tokenizer DIR (to count tokens)");
  }
  return s;
}

std::vector<sample_request> build_dataset(const settings& s, std::mt19937_64& rng) {
  std::optional<tokenizer> tok;
  if (!s.tokenizer_dir.empty()) tok = tokenizer::load_dir(s.tokenizer_dir);
  if (s.dataset == "sharegpt") {
    return sample_sharegpt(
        read_sharegpt(s.dataset_path), s.num_prompts,
        [&](const std::string& t) { return static_cast<int32_t>(tok->encode(t, true).size()); },
        [&](const std::string& t) { return static_cast<int32_t>(tok->encode(t, false).size()); }, rng);
  }
  std::vector<int32_t> ids;
  if (tok) {
    for (int32_t id = 0; id < tok->vocab_size(); ++id) {
      if (!tok->is_special(id) && !tok->id_to_token(id).empty()) ids.push_back(id);
    }
  } else {
    for (int32_t id = kDefaultIdLo; id < kDefaultIdHi; ++id) ids.push_back(id);
  }
  return make_random_requests(s.num_prompts, s.input_len, s.output_len, s.range_ratio, s.prefix_len, ids,
                              rng);
}

// One line redrawn in place on a terminal; otherwise a plain line at each tenth of the run.
class progress {
 public:
  explicit progress(int32_t total) : total_(total), tty_(isatty(STDERR_FILENO) == 1), start_(steady::now()) {}

  void update(int32_t done, int32_t failed, int32_t in_flight, bool force = false) {
    const auto now = steady::now();
    const double secs = std::chrono::duration<double>(now - start_).count();
    if (tty_) {
      if (!force && now - last_draw_ < std::chrono::milliseconds(100)) return;
      last_draw_ = now;
      constexpr int kWidth = 30;
      const int filled = total_ ? done * kWidth / total_ : kWidth;
      std::fprintf(stderr, "\r\033[K[%s%s] %d/%d done, %d in flight, %d failed, %.1f s",
                   std::string(filled, '=').c_str(), std::string(kWidth - filled, ' ').c_str(), done, total_,
                   in_flight, failed, secs);
      std::fflush(stderr);
      return;
    }
    const int tenth = total_ ? done * 10 / total_ : 10;
    if ((tenth <= last_tenth_ && !force) || done == last_done_) return;
    last_tenth_ = tenth;
    last_done_ = done;
    std::fprintf(stderr, "bench serve: %d/%d done, %d in flight, %d failed, %.1f s\n", done, total_,
                 in_flight, failed, secs);
  }
  void finish() {
    if (tty_) std::fprintf(stderr, "\n");
  }

 private:
  int32_t total_;
  bool tty_;
  steady::time_point start_, last_draw_;
  int last_tenth_ = 0, last_done_ = -1;
};

// Sends the requests on their schedule, at most max_concurrency at once, and waits for all of them.
struct run_result {
  std::vector<request_outcome> outcomes;
  double duration_s = 0;
};

run_result run_benchmark(serve_client& client, const settings& s, const std::vector<sample_request>& samples,
                         const std::vector<double>& arrivals) {
  std::mutex mu;
  std::condition_variable cv;
  int32_t in_flight = 0, done = 0, failed = 0;
  run_result res;
  res.outcomes.resize(samples.size());
  progress bar(static_cast<int32_t>(samples.size()));
  const auto t0 = steady::now();
  auto last_done = t0;
  const auto redraw = std::chrono::milliseconds(100);
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto arrival =
        t0 + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(arrivals[i]));
    std::unique_lock<std::mutex> lk(mu);
    for (;;) {
      const auto now = steady::now();
      const bool slot = s.max_concurrency == 0 || in_flight < s.max_concurrency;
      if (now >= arrival && slot) break;
      cv.wait_until(lk, now >= arrival ? now + redraw : std::min(arrival, now + redraw));
      bar.update(done, failed, in_flight);
    }
    ++in_flight;
    lk.unlock();
    const auto sent = steady::now();
    client.submit(samples[i], [&, i, sent](request_outcome o) {
      const auto t = steady::now();
      o.start_s = std::chrono::duration<double>(sent - t0).count();
      std::lock_guard<std::mutex> g(mu);
      res.outcomes[i] = std::move(o);
      if (!res.outcomes[i].success) ++failed;
      --in_flight;
      ++done;
      last_done = std::max(last_done, t);
      cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> lk(mu);
  while (done < static_cast<int32_t>(samples.size())) {
    cv.wait_for(lk, redraw);
    bar.update(done, failed, in_flight);
  }
  bar.update(done, failed, in_flight, true);
  bar.finish();
  res.duration_s = std::chrono::duration<double>(last_done - t0).count();
  return res;
}

request_outcome send_one(serve_client& client, const sample_request& r) {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<request_outcome> out;
  client.submit(r, [&](request_outcome o) {
    std::lock_guard<std::mutex> g(mu);
    out = std::move(o);
    cv.notify_all();
  });
  std::unique_lock<std::mutex> lk(mu);
  cv.wait(lk, [&] { return out.has_value(); });
  return *out;
}

void print_line(const char* label, double v) { std::printf("%-40s %.2f\n", label, v); }
void print_line(const char* label, int64_t v) {
  std::printf("%-40s %lld\n", label, static_cast<long long>(v));
}
void print_rule(const std::string& title, char fill) {
  const size_t width = 50;
  const size_t pad = title.empty() ? width : (width - title.size() - 2) / 2;
  std::string line(pad, fill);
  if (!title.empty()) line += " " + title + " ";
  line += std::string(width - line.size(), fill);
  std::printf("%s\n", line.c_str());
}

void print_distribution(const char* title, const char* name, const distribution& d) {
  print_rule(title, '-');
  char label[64];
  for (auto [what, v] : {std::pair<const char*, double>{"Mean", d.mean},
                         {"Median", d.median},
                         {"P90", d.p90},
                         {"P99", d.p99}}) {
    std::snprintf(label, sizeof(label), "%s %s (ms):", what, name);
    print_line(label, v);
  }
}

void print_table(const settings& s, const run_summary& r) {
  print_rule("Serving Benchmark Result", '=');
  print_line("Successful requests:", static_cast<int64_t>(r.completed));
  print_line("Failed requests:", static_cast<int64_t>(r.failed));
  if (std::isfinite(s.request_rate)) {
    print_line("Request rate configured (RPS):", s.request_rate);
  } else {
    std::printf("%-40s %s\n", "Request rate configured (RPS):", "inf");
  }
  if (s.max_concurrency) print_line("Maximum request concurrency:", static_cast<int64_t>(s.max_concurrency));
  print_line("Benchmark duration (s):", r.duration_s);
  print_line("Total input tokens:", r.total_input_tokens);
  print_line("Total generated tokens:", r.total_output_tokens);
  print_line("Request throughput (req/s):", r.request_throughput);
  if (r.request_goodput) print_line("Request goodput (req/s):", *r.request_goodput);
  print_line("Output token throughput (tok/s):", r.output_throughput);
  print_line("Total token throughput (tok/s):", r.total_token_throughput);
  print_distribution("Time to First Token", "TTFT", r.ttft_ms);
  print_distribution("Time per Output Token (excl. 1st token)", "TPOT", r.tpot_ms);
  print_distribution("Inter-token Latency", "ITL", r.itl_ms);
  print_distribution("End-to-end Latency", "E2EL", r.e2el_ms);
  print_rule("", '=');
  std::fflush(stdout);
}

json distribution_json(const distribution& d) {
  return {{"mean", d.mean}, {"median", d.median}, {"p90", d.p90}, {"p99", d.p99}, {"std", d.std}};
}

json record_json(const settings& s, const run_summary& r, const std::vector<request_outcome>& outcomes) {
  json cfg = {{"base_url", s.base_url},
              {"backend", s.backend},
              {"model", s.model},
              {"dataset", s.dataset},
              {"num_prompts", s.num_prompts},
              {"request_rate", std::isfinite(s.request_rate) ? json(s.request_rate) : json("inf")},
              {"burstiness", s.burstiness},
              {"max_concurrency", s.max_concurrency ? json(s.max_concurrency) : json(nullptr)},
              {"seed", s.seed},
              {"io_threads", s.io_threads},
              {"timeout_s", s.timeout_s},
              {"request_timeout_s", s.request_timeout_s}};
  if (s.dataset == "sharegpt") {
    cfg["dataset_path"] = s.dataset_path;
  } else {
    cfg.update({{"input_len", s.input_len},
                {"output_len", s.output_len},
                {"range_ratio", s.range_ratio},
                {"prefix_len", s.prefix_len}});
  }
  if (!s.tokenizer_dir.empty()) cfg["tokenizer"] = s.tokenizer_dir;
  if (s.backend == "ws") cfg["ws_connections"] = s.ws_connections;
  if (!s.slos.empty()) {
    json g = json::object();
    if (s.slos.ttft_ms) g["ttft_ms"] = *s.slos.ttft_ms;
    if (s.slos.tpot_ms) g["tpot_ms"] = *s.slos.tpot_ms;
    if (s.slos.e2el_ms) g["e2el_ms"] = *s.slos.e2el_ms;
    cfg["goodput"] = g;
  }
  json sum = {{"completed", r.completed},
              {"failed", r.failed},
              {"duration_s", r.duration_s},
              {"total_input_tokens", r.total_input_tokens},
              {"total_output_tokens", r.total_output_tokens},
              {"request_throughput", r.request_throughput},
              {"request_goodput", r.request_goodput ? json(*r.request_goodput) : json(nullptr)},
              {"output_throughput", r.output_throughput},
              {"total_token_throughput", r.total_token_throughput},
              {"ttft_ms", distribution_json(r.ttft_ms)},
              {"tpot_ms", distribution_json(r.tpot_ms)},
              {"itl_ms", distribution_json(r.itl_ms)},
              {"e2el_ms", distribution_json(r.e2el_ms)}};
  json reqs = json::array();
  for (const auto& o : outcomes) {
    const auto tpot = tpot_ms(o);
    reqs.push_back({{"success", o.success},
                    {"error", o.error.empty() ? json(nullptr) : json(o.error)},
                    {"prompt_tokens", o.prompt_tokens},
                    {"output_tokens", o.output_tokens},
                    {"expected_output_tokens", o.expected_output_tokens},
                    {"start_s", o.start_s},
                    {"ttft_ms", o.ttft_ms},
                    {"tpot_ms", tpot ? json(*tpot) : json(nullptr)},
                    {"latency_ms", o.latency_ms},
                    {"itl_ms", o.itl_ms}});
  }
  return {{"config", cfg}, {"summary", sum}, {"requests", reqs}};
}

int run(const std::vector<std::string>& args) {
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kHelp;
      return 0;
    }
  }
  settings s = parse_settings(args);
  std::mt19937_64 rng(s.seed);
  const auto samples = build_dataset(s, rng);
  const auto arrivals = arrival_times(s.num_prompts, s.request_rate, s.burstiness, rng);

  client_options o;
  o.server = parse_base_url(s.base_url);
  o.backend = s.backend == "ws" ? backend_kind::ws : backend_kind::openai;
  o.api_key = s.api_key;
  if (s.model.empty()) {
    const json models = json::parse(http_get(o.server, "/v1/models", s.api_key), nullptr, false);
    if (models.is_discarded() || !models.contains("data") || !models["data"].is_array() ||
        models["data"].empty() || !models["data"][0].contains("id") || !models["data"][0]["id"].is_string()) {
      throw error("bench serve: GET /v1/models did not list a model; name one with --model");
    }
    s.model = models["data"][0]["id"].get<std::string>();
  }
  o.model = s.model;
  o.io_threads = s.io_threads;
  o.ws_connections = std::min(s.ws_connections, s.num_prompts);
  o.timeout = std::chrono::seconds(s.timeout_s);
  o.request_timeout = std::chrono::milliseconds(std::llround(s.request_timeout_s * 1000));
  serve_client client(o);

  std::fprintf(
      stderr, "bench serve: %s backend, model %s, %d prompts (%s), request rate %g/s, burstiness %g%s\n",
      s.backend.c_str(), s.model.c_str(), s.num_prompts, s.dataset.c_str(), s.request_rate, s.burstiness,
      s.max_concurrency ? (", max concurrency " + std::to_string(s.max_concurrency)).c_str() : "");
  // One request first, as vLLM does: a wrong model, key or length fails once, clearly, not N times.
  const auto test = send_one(client, samples[0]);
  if (!test.success) throw error("bench serve: the test request failed: " + test.error);

  const auto result = run_benchmark(client, s, samples, arrivals);
  const run_summary summary = summarize_run(result.outcomes, result.duration_s, s.slos);
  print_table(s, summary);
  if (summary.failed > 0) {
    for (const auto& out : result.outcomes) {
      if (!out.success) {
        std::fprintf(stderr, "bench serve: %d requests failed; first error: %s\n", summary.failed,
                     out.error.c_str());
        break;
      }
    }
  }
  if (!s.json_path.empty()) {
    std::ofstream f(s.json_path);
    f << record_json(s, summary, result.outcomes).dump(2) << "\n";
    if (!f) throw error("bench serve: cannot write " + s.json_path);
  }
  return summary.completed > 0 ? 0 : 1;
}

bench_registrar reg("serve",
                    "a serving benchmark against a running server: TTFT, TPOT, ITL, throughput (--help)",
                    run);

}  // namespace
}  // namespace troupe::cli::bench_serve
