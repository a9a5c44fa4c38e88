// troupe bench overhead: CPU microseconds per step spent in the scheduler, the KV manager and the actor
// path (intake, scheduler, worker messaging, output processing), measured against a worker whose model
// does no math. What is left over per step is what a real decode step pays on top of the GPU.
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "actors/engine.h"
#include "cli/args.h"
#include "cli/bench.h"
#include "core/error.h"
#include "core/sched/output_processor.h"
#include "core/sched/scheduler.h"
#include "core/sched/step_executor.h"

namespace troupe::cli {
namespace {

// A model_runner with a tiny vocabulary whose forward returns flat logits at once.
class null_runner final : public model_runner {
 public:
  null_runner(int32_t num_blocks) : blocks_(num_blocks) {
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
  void copy_blocks(const int32_t*, const int32_t*, int32_t) override {}
  void reserve_host_blocks(int32_t) override {}
  void swap_out(const int32_t*, const int32_t*, int32_t) override {}
  void swap_in(const int32_t*, const int32_t*, int32_t) override {}
  uint64_t steps() const { return steps_.load(); }

 private:
  model_config cfg_;
  int32_t blocks_;
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
// objects cost by themselves; the actor path adds messaging on top of this.
double core_us_per_step(int32_t num_seqs, int32_t decode_tokens) {
  null_runner runner(num_seqs * ((8 + decode_tokens) / 16 + 2));
  scheduler_config sc;
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
    step_plan plan = sched.plan();
    const auto b = sc_clock::now();
    step_result res = exec.execute(plan);
    const auto c = sc_clock::now();
    auto outs = sched.update(res);
    const auto d = sc_clock::now();
    for (int64_t id : out.process(outs, std::chrono::steady_clock::now())) sched.finish_sequence(id);
    const auto e = sc_clock::now();
    phase[0] += std::chrono::duration<double>(b - a).count();
    phase[1] += std::chrono::duration<double>(c - b).count();
    phase[2] += std::chrono::duration<double>(d - c).count();
    phase[3] += std::chrono::duration<double>(e - d).count();
  };
  step();
  const auto t0 = std::chrono::steady_clock::now();
  const uint64_t s0 = runner.steps();
  while (sched.has_work()) step();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const uint64_t steps = runner.steps() - s0;
  (void)left;
  if (std::getenv("TROUPE_BENCH_PHASES")) {
    std::cerr << "batch " << num_seqs << ": plan " << 1e6 * phase[0] / steps << " execute "
              << 1e6 * phase[1] / steps << " update " << 1e6 * phase[2] / steps << " outputs "
              << 1e6 * phase[3] / steps << " us/step\n";
  }
  return steps ? 1e6 * secs / static_cast<double>(steps) : 0.0;
}

step_cost us_per_step(int32_t num_seqs, int32_t decode_tokens) {
  null_runner runner(num_seqs * ((8 + decode_tokens) / 16 + 2));
  actor_engine_options o;
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
  arg_parser ap("bench overhead", {"decode-tokens", "batches"}, {"json"});
  ap.parse(args);
  const int32_t tokens = static_cast<int32_t>(ap.get_int("decode-tokens").value_or(256));
  if (tokens < 2) throw error("--decode-tokens must be >= 2");
  std::vector<int32_t> batches = {1, 64, 256};
  if (auto b = ap.get_ids("batches")) batches = *b;
  nlohmann::json per, cpu, core;
  for (int32_t b : batches) {
    if (b < 1) throw error("--batches: each batch must be >= 1");
    const step_cost c = us_per_step(b, tokens);
    per[std::to_string(b)] = c.wall_us;
    cpu[std::to_string(b)] = c.cpu_us;
    core[std::to_string(b)] = core_us_per_step(b, tokens);
  }
  // us_per_step: wall clock through the actors (what a step waits for); cpu_us_per_step: CPU time of
  // every thread per step; core_us_per_step: the core objects alone on one thread, no actors.
  nlohmann::json j = {
      {"us_per_step", per}, {"cpu_us_per_step", cpu}, {"core_us_per_step", core}, {"decode_tokens", tokens}};
  std::cout << (ap.has("json") ? j.dump() : j.dump(2)) << "\n";
  return 0;
}

bench_registrar reg("overhead",
                    "scheduler + KV manager + actor path per step against a no-math worker (--json)", run);

}  // namespace
}  // namespace troupe::cli
