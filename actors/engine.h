// The actor system behind troupe::engine: intake (the facade's submit), scheduler (prefill and decode
// around core::scheduler, which owns the KV manager), one worker per device (detached: it blocks on the
// model), the output actor (detokenize, stop strings, events), and a supervisor that restarts a dead
// worker; in-flight requests then resume by recompute.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "core/engine_api.h"
#include "core/plugin_api/model_runner.h"
#include "core/sched/scheduler.h"

namespace troupe {

class tokenizer;

namespace actors {
struct shared_state;
}

struct actor_engine_options {
  scheduler_config sched;  // max_model_len 0: the model's
  bool prefix_caching = true;
  std::string model_name;  // served name
  int32_t max_worker_restarts = 8;
  uint32_t actor_threads = 0;  // CAF scheduler threads; 0: CAF's default
};

class actor_engine final : public engine {
 public:
  // runner and tok must outlive the engine.
  actor_engine(model_runner& runner, const tokenizer* tok, actor_engine_options opt);
  ~actor_engine() override;
  actor_engine(const actor_engine&) = delete;
  actor_engine& operator=(const actor_engine&) = delete;

  submit_result submit(engine_request req, request_sink sink) override;
  void abort(const std::string& id) override;
  engine_stats stats() const override;
  model_info info() const override;
  const tokenizer* get_tokenizer() const override { return tok_; }
  bool healthy() const override;

  // Test and operator hooks.
  void crash_worker_next_step();  // the worker throws mid-step (the supervisor restarts it)
  int32_t worker_restarts() const;
  // Swaps the model runner (a plugin change on reload): the worker finishes its step and goes, a new one
  // starts on `runner`, and every in-flight request resumes by recompute. Blocks until the old runner is
  // no longer used; the caller may then destroy it. The new runner must serve the same model with the same
  // KV geometry (blocks, block size); throws troupe::error otherwise.
  void replace_runner(model_runner& runner);
  // Waits until no request is live and every KV block is free or cached-evictable; false on timeout.
  bool wait_idle(std::chrono::milliseconds timeout) const;
  const scheduler_config& config() const { return opt_.sched; }

 private:
  model_config cfg_;           // the model's, copied: the runner may be replaced
  int32_t num_kv_blocks_ = 0;  // the KV geometry every runner must keep
  int32_t block_size_ = 0;
  const tokenizer* tok_;
  actor_engine_options opt_;
  std::vector<int32_t> eos_ids_;
  std::shared_ptr<actors::shared_state> state_;
  struct system;
  std::unique_ptr<system> sys_;
};

}  // namespace troupe
