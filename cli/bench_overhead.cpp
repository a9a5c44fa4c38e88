// troupe bench overhead: CPU microseconds per step spent in the scheduler, the KV manager and the actor
// path (intake, scheduler, worker messaging, output processing), measured against a worker whose model
// does no math. What is left over per step is what a real decode step pays on top of the GPU.
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

double us_per_step(int32_t num_seqs, int32_t decode_tokens) {
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
    auto res = engine.submit(r, [&](const request_event& ev) {
      if (ev.finished) {
        std::lock_guard<std::mutex> lk(mu);
        if (--left == 0) cv.notify_all();
      }
    });
    if (res.status != submit_status::accepted) throw error("bench overhead: request refused: " + res.message);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const uint64_t s0 = runner.steps();
  {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return left == 0; });
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const uint64_t steps = runner.steps() - s0;
  return steps ? 1e6 * secs / static_cast<double>(steps) : 0.0;
}

int run(const std::vector<std::string>& args) {
  arg_parser ap("bench overhead", {"decode-tokens", "batches"}, {"json"});
  ap.parse(args);
  const int32_t tokens = static_cast<int32_t>(ap.get_int("decode-tokens").value_or(256));
  if (tokens < 2) throw error("--decode-tokens must be >= 2");
  std::vector<int32_t> batches = {1, 64, 256};
  if (auto b = ap.get_ids("batches")) batches = *b;
  nlohmann::json per;
  for (int32_t b : batches) {
    if (b < 1) throw error("--batches: each batch must be >= 1");
    per[std::to_string(b)] = us_per_step(b, tokens);
  }
  nlohmann::json j = {{"us_per_step", per}, {"decode_tokens", tokens}};
  std::cout << (ap.has("json") ? j.dump() : j.dump(2)) << "\n";
  return 0;
}

bench_registrar reg("overhead",
                    "scheduler + KV manager + actor path per step against a no-math worker (--json)", run);

}  // namespace
}  // namespace troupe::cli
