// troupe bench overhead: CPU microseconds per step spent in the scheduler, the KV manager and the actor
// path (intake, scheduler, worker messaging, output processing), measured against a worker whose model
// does no math. What is left over per step is what a real decode step pays on top of the GPU. Measured
// with asynchronous scheduling (the default: the host plans step N+1 while the worker's runner holds step
// N) and one step at a time; the worker "samples on its device" (ids 0, at once) in both, and steps
// asynchronously (forward_sample_submit / forward_sample_collect) in the first.
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>

#include "actors/engine.h"
#include "cli/args.h"
#include "cli/bench.h"
#include "core/error.h"
#include "core/sched/output_processor.h"
#include "core/sched/scheduler.h"
#include "core/sched/step_executor.h"

namespace troupe::cli {
namespace {

// A model_runner with a tiny vocabulary whose forward returns flat logits at once and whose draws (on its
// "device") are id 0; async: it steps asynchronously, as the CUDA runner does. device_us > 0 models a
// device that takes that long per step: a step starts when it is submitted or when the previous one ends,
// whichever is later, and its collect (or forward_sample) waits for its end.
class null_runner final : public model_runner {
 public:
  null_runner(int32_t num_blocks, bool async, int32_t device_us = 0)
      : blocks_(num_blocks), async_(async), device_(std::chrono::microseconds(device_us)) {
    cfg_.architecture = "null";
    cfg_.vocab_size = 64;
    cfg_.hidden_size = 64;
    cfg_.num_layers = 1;
    cfg_.num_heads = 1;
    cfg_.num_kv_heads = 1;
    cfg_.head_dim = 64;
    cfg_.max_position_embeddings = 1 << 20;
  }
  const model_config& config() const override { return cfg_; }
  int32_t block_size() const override { return 16; }
  int32_t num_kv_blocks() const override { return blocks_; }
  void forward(const forward_batch& b, float* logits) override {
    std::fill(logits, logits + static_cast<size_t>(b.num_logits) * cfg_.vocab_size, 0.0f);
    steps_.fetch_add(1, std::memory_order_relaxed);
  }
  bool samples_on_device() const override { return true; }
  bool samples_async() const override { return async_; }
  void forward_sample(const forward_batch&, const device_sample_row*, int32_t num_rows, int32_t* ids,
                      float* logprobs, token_logprob*) override {
    draw(num_rows, ids, logprobs);
    std::this_thread::sleep_until(enqueue());
    steps_.fetch_add(1, std::memory_order_relaxed);
  }
  void forward_sample_submit(const forward_batch&, const device_sample_row*, int32_t num_rows) override {
    if (submitted_.size() >= 2) throw error("bench overhead: a third outstanding step");
    submitted_.push_back({num_rows, enqueue()});
    steps_.fetch_add(1, std::memory_order_relaxed);
  }
  void forward_sample_collect(int32_t* ids, float* logprobs, token_logprob*) override {
    if (submitted_.empty()) throw error("bench overhead: collect without a submit");
    draw(submitted_.front().first, ids, logprobs);
    std::this_thread::sleep_until(submitted_.front().second);
    submitted_.pop_front();
  }
  void copy_blocks(const int32_t*, const int32_t*, int32_t) override {}
  void reserve_host_blocks(int32_t) override {}
  void swap_out(const int32_t*, const int32_t*, int32_t) override {}
  void swap_in(const int32_t*, const int32_t*, int32_t) override {}
  uint64_t steps() const { return steps_.load(); }

 private:
  void draw(int32_t n, int32_t* ids, float* logprobs) const {
    std::fill(ids, ids + n, 0);
    std::fill(logprobs, logprobs + n, -4.158883f);  // log(1/64): flat logits
  }
  model_config cfg_;
  int32_t blocks_;
  bool async_;
  // When a step submitted now ends on the modelled device.
  std::chrono::steady_clock::time_point enqueue() {
    device_free_ = std::max(device_free_, std::chrono::steady_clock::now()) + device_;
    return device_free_;
  }
  std::chrono::steady_clock::duration device_;
  std::chrono::steady_clock::time_point device_free_{};
  std::deque<std::pair<int32_t, std::chrono::steady_clock::time_point>> submitted_;  // rows, end
  std::atomic<uint64_t> steps_{0};
};

double process_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

struct step_cost {
  double wall_us = 0;  // wall-clock microseconds per step
  double cpu_us = 0;   // process CPU microseconds per step (every thread)
};

// The same work without actors, on one thread: plan, execute, update, process outputs. What the core
// objects cost by themselves; the actor path adds messaging on top of this. async: plan and submit the
// next step before collecting the previous one, whenever the scheduler allows it.
double core_us_per_step(int32_t num_seqs, int32_t decode_tokens, bool async, int32_t device_us) {
  null_runner runner(num_seqs * ((8 + decode_tokens) / 16 + 2), async, device_us);
  scheduler_config sc;
  sc.async_scheduling = async;
  sc.max_num_seqs = std::max(256, num_seqs);
  sc.max_num_batched_tokens = std::max(2048, num_seqs * 8);
  sc.max_model_len = 1 << 20;
  scheduler sched(sc, runner.num_kv_blocks(), runner.block_size(), true);
  step_executor exec(runner);
  output_processor out(nullptr);
  auto p = std::make_shared<sampling_params>();
  p->temperature = 0;
  p->max_tokens = decode_tokens;
  p->ignore_eos = true;
  p->need_logprob = false;
  int left = num_seqs;
  for (int i = 0; i < num_seqs; ++i) {
    sched_request_in in;
    in.rid = static_cast<uint64_t>(i + 1);
    in.prompt = {1, 2, 3, 4, 5, 6, 7, static_cast<int32_t>(i % 64)};
    in.params = p;
    out.add(
        in.rid, "b" + std::to_string(i), p, in.prompt, [&](const request_event& ev) { left -= ev.finished; },
        std::chrono::steady_clock::now());
    sched.add(std::move(in));
  }
  // The first step prefills; time the decode steps.
  using sc_clock = std::chrono::steady_clock;
  double phase[4] = {0, 0, 0, 0};
  auto step = [&] {
    const auto a = sc_clock::now();
    double submit_s = 0;
    while (sched.has_work() && (sched.num_in_flight() == 0 || sched.can_plan_ahead())) {
      step_plan plan = sched.plan();
      if (plan.empty()) break;
      const auto s0 = sc_clock::now();
      exec.submit(plan);
      submit_s += std::chrono::duration<double>(sc_clock::now() - s0).count();
    }
    if (!sched.step_in_flight()) return;
    const auto b = sc_clock::now();
    step_result res = exec.collect();
    const auto c = sc_clock::now();
    auto outs = sched.update(res);
    const auto d = sc_clock::now();
    for (int64_t id : out.process(outs, std::chrono::steady_clock::now())) sched.finish_sequence(id);
    const auto e = sc_clock::now();
    phase[0] += std::chrono::duration<double>(b - a).count() - submit_s;
    phase[1] += std::chrono::duration<double>(c - b).count() + submit_s;
    phase[2] += std::chrono::duration<double>(d - c).count();
    phase[3] += std::chrono::duration<double>(e - d).count();
  };
  step();
  const auto t0 = std::chrono::steady_clock::now();
  const uint64_t s0 = runner.steps();
  while (sched.has_work() || sched.step_in_flight()) step();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const uint64_t steps = runner.steps() - s0;
  (void)left;
  if (std::getenv("TROUPE_BENCH_PHASES")) {
    std::cerr << (async ? "async" : "sync") << " batch " << num_seqs << ": plan " << 1e6 * phase[0] / steps
              << " execute " << 1e6 * phase[1] / steps << " update " << 1e6 * phase[2] / steps << " outputs "
              << 1e6 * phase[3] / steps << " us/step\n";
  }
  return steps ? 1e6 * secs / static_cast<double>(steps) : 0.0;
}

step_cost us_per_step(int32_t num_seqs, int32_t decode_tokens, bool async, int32_t device_us) {
  null_runner runner(num_seqs * ((8 + decode_tokens) / 16 + 2), async, device_us);
  actor_engine_options o;
  o.sched.async_scheduling = async;
  o.sched.max_num_seqs = std::max(256, num_seqs);
  o.sched.max_num_batched_tokens = std::max(2048, num_seqs * 8);
  o.sched.max_model_len = 1 << 20;
  actor_engine engine(runner, nullptr, o);
  std::mutex mu;
  std::condition_variable cv;
  int left = num_seqs;
  for (int i = 0; i < num_seqs; ++i) {
    engine_request r;
    r.id = "b" + std::to_string(i);
    r.prompt_ids = {1, 2, 3, 4, 5, 6, 7, static_cast<int32_t>(i % 64)};
    r.params.temperature = 0;
    r.params.max_tokens = decode_tokens;
    r.params.ignore_eos = true;
    r.params.need_logprob = false;  // as the gateway sends it when the client asks for no logprobs
    auto res = engine.submit(r, [&](const request_event& ev) {
      if (ev.finished) {
        std::lock_guard<std::mutex> lk(mu);
        if (--left == 0) cv.notify_all();
      }
    });
    if (res.status != submit_status::accepted) throw error("bench overhead: request refused: " + res.message);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = process_cpu_seconds();
  const uint64_t s0 = runner.steps();
  {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return left == 0; });
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu = process_cpu_seconds() - c0;
  const uint64_t steps = runner.steps() - s0;
  if (!steps) return {};
  return {1e6 * secs / static_cast<double>(steps), 1e6 * cpu / static_cast<double>(steps)};
}

int run(const std::vector<std::string>& args) {
  arg_parser ap("bench overhead", {"decode-tokens", "batches", "async-scheduling", "device-us"}, {"json"});
  ap.parse(args);
  const int32_t tokens = static_cast<int32_t>(ap.get_int("decode-tokens").value_or(256));
  if (tokens < 2) throw error("--decode-tokens must be >= 2");
  std::vector<int32_t> batches = {1, 64, 256};
  if (auto b = ap.get_ids("batches")) batches = *b;
  const std::string mode = ap.get_or("async-scheduling", "both");
  // A modelled device time per step: the wall figures then show how much host work hides behind it.
  const int32_t device_us = static_cast<int32_t>(ap.get_int("device-us").value_or(0));
  if (device_us < 0) throw error("--device-us must be >= 0");
  if (mode != "on" && mode != "off" && mode != "both")
    throw error("--async-scheduling must be on, off or both (got '" + mode + "')");
  for (int32_t b : batches) {
    if (b < 1) throw error("--batches: each batch must be >= 1");
  }
  // us_per_step: wall clock through the actors (what a step waits for); cpu_us_per_step: CPU time of
  // every thread per step; core_us_per_step: the core objects alone on one thread, no actors. Per
  // scheduling mode: "async" (planning ahead, the default) and "sync" (one step at a time); the top-level
  // figures are those of the default mode when it was measured.
  auto measure = [&](bool async) {
    nlohmann::json per, cpu, core;
    for (int32_t b : batches) {
      const step_cost c = us_per_step(b, tokens, async, device_us);
      per[std::to_string(b)] = c.wall_us;
      cpu[std::to_string(b)] = c.cpu_us;
      core[std::to_string(b)] = core_us_per_step(b, tokens, async, device_us);
    }
    return nlohmann::json{{"us_per_step", per}, {"cpu_us_per_step", cpu}, {"core_us_per_step", core}};
  };
  nlohmann::json j = {{"decode_tokens", tokens}, {"device_us", device_us}};
  if (mode != "off") j["async"] = measure(true);
  if (mode != "on") j["sync"] = measure(false);
  for (const char* k : {"us_per_step", "cpu_us_per_step", "core_us_per_step"})
    j[k] = j.count("async") ? j["async"][k] : j["sync"][k];
  std::cout << (ap.has("json") ? j.dump() : j.dump(2)) << "\n";
  return 0;
}

bench_registrar reg(
    "overhead",
    "scheduler + KV manager + actor path per step against a no-math worker, with asynchronous "
    "scheduling and without (--async-scheduling on|off|both, --device-us N: a modelled device time per step, "
    "--json)",
    run);

}  // namespace
}  // namespace troupe::cli
