// The worker side of a step, independent of the backend: keeps a mirror of each sequence (history for
// penalties, block table), applies the plan's diffs, swaps and copies, builds the forward_batch, runs the
// model_runner and samples: on the host with sampler::sample over copied logits rows, or, when the runner
// samples on its device (model_runner::samples_on_device), every draw of the step as one device row. A
// worker actor owns one.
//
// Asynchronous scheduling splits a step in two: submit(plan) starts it and collect() returns the oldest
// submitted step's result, so that the worker can submit step N+1 before it collects step N (at most two
// outstanding). A plan's kTokenPending is the id its sequence drew in the previous submitted step: a
// runner that steps asynchronously (model_runner::samples_async) reads it on its device through
// forward_batch::pending_rows; with any other runner submit runs the whole step at once (the previous
// step's ids are then on the host) and collect() hands its result over.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/plugin_api/model_runner.h"
#include "core/sampling.h"
#include "core/sched/step.h"

namespace troupe {

class step_executor {
 public:
  explicit step_executor(model_runner& runner);

  // Starts the step. At most two steps are outstanding: the caller collects one before a third submit.
  void submit(const step_plan& plan);
  // The oldest outstanding step's result (waits for the runner when it still runs).
  step_result collect();
  // submit + collect: the synchronous step.
  step_result execute(const step_plan& plan) {
    submit(plan);
    return collect();
  }
  // Collects and discards every outstanding step, so that the runner holds nothing submitted (a worker
  // that goes away leaves the runner usable by the next one).
  void drain();

  int32_t num_outstanding() const { return num_outstanding_; }
  int32_t num_sequences() const { return static_cast<int32_t>(mirrors_.size()); }
  bool steps_async() const { return async_; }

 private:
  struct mirror {
    std::vector<int32_t> prompt, outputs;
    std::vector<int32_t> table;
    std::shared_ptr<const sampling_params> params;
    uint64_t seed = 0;
    int32_t pending = 0;       // draws submitted whose ids are not in outputs yet (async runner only)
    uint64_t gen = 0;          // incarnation: a sequence dropped and sent again is a new mirror
    uint64_t draw_submit = 0;  // the submit (1, 2, ...) of its last draw ...
    int32_t draw_row = -1;     // ... and that draw's row in it
  };
  struct draw_target {
    int64_t seq_id = 0;
    uint64_t gen = 0;
  };
  // A submitted step not collected yet.
  struct outstanding {
    step_result result;                // complete unless on_runner
    bool on_runner = false;            // forward_sample_submit'ed: the runner holds the results
    std::vector<draw_target> targets;  // on_runner: [draws] whose draw each row is
    double t0 = 0;                     // steady-clock seconds at submit (forward_s)
  };

  sampled_token sample_one(const float* row, mirror& m, int64_t seq_id, uint64_t step);
  template <class F>
  void for_each_draw(const step_plan& plan, F&& f);
  // Mirrors, swaps, copies and the forward_batch of one plan (placeholders resolved or pending).
  void prepare(const step_plan& plan, forward_batch& b);
  // The whole step now (every runner but an asynchronous one).
  void run_now(const step_plan& plan, const forward_batch& b, step_result& res);
  void build_device_rows(const step_plan& plan, std::vector<draw_target>* targets);
  // Device results (dev_ids_, dev_logprobs_, dev_top_) of draws `targets` -> samples and mirrors.
  void take_device_results(const std::vector<draw_target>& targets, step_result& res);
  // Waits for an outstanding asynchronous step's results and completes it on the host.
  void finish_on_host(outstanding& o);
  outstanding& slot(int32_t i) { return slots_[(head_ + i) % slots_.size()]; }

  model_runner& runner_;
  const bool async_;
  std::unordered_map<int64_t, mirror> mirrors_;
  sampler sampler_;
  uint64_t next_gen_ = 1;
  uint64_t num_submits_ = 0;
  // The ids of the last submitted step's draws, by row, once they are on the host:
  std::vector<int32_t> prev_ids_;
  bool prev_on_host_ = false;
  std::array<outstanding, 2> slots_;  // a ring: the oldest at head_
  int32_t head_ = 0, num_outstanding_ = 0;
  // step buffers, reused
  std::vector<int32_t> ids_, pos_, slots_map_, qs_, ctx_, rows_, prompt_lens_, tables_, src_, dst_, pending_;
  std::vector<float> logits_, scratch_;
  // Draws on the device (one per sampled sequence and per fork child):
  std::vector<device_sample_row> dev_rows_;  // [draws]
  std::vector<draw_target> sync_targets_;    // [draws]: whose draw (forward_sample)
  std::vector<int32_t> dev_ids_;             // [draws]
  std::vector<float> dev_logprobs_;          // [draws]
  std::vector<token_logprob> dev_top_;       // [draws, sampling_max_logprobs]
  std::vector<mirror*> active_;
};

}  // namespace troupe
