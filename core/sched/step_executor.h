// The worker side of a step, independent of the backend: keeps a mirror of each sequence (history for
// penalties, block table), applies the plan's diffs, swaps and copies, builds the forward_batch, runs the
// model_runner and samples: on the host with sampler::sample over copied logits rows, or, when the runner
// samples on its device (model_runner::samples_on_device), every draw of the step as one device row. A
// worker actor owns one.
#pragma once

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
  explicit step_executor(model_runner& runner) : runner_(runner) {}

  step_result execute(const step_plan& plan);

  int32_t num_sequences() const { return static_cast<int32_t>(mirrors_.size()); }

 private:
  struct mirror {
    std::vector<int32_t> prompt, outputs;
    std::vector<int32_t> table;
    std::shared_ptr<const sampling_params> params;
    uint64_t seed = 0;
  };
  sampled_token sample_one(const float* row, mirror& m, int64_t seq_id);
  template <class F>
  void for_each_draw(const step_plan& plan, F&& f);
  // The draws of a step whose runner samples on its device: forward_sample, then the mirrors' updates.
  void forward_and_sample_on_device(const step_plan& plan, const forward_batch& b, step_result& res);

  model_runner& runner_;
  std::unordered_map<int64_t, mirror> mirrors_;
  sampler sampler_;
  // step buffers, reused
  std::vector<int32_t> ids_, pos_, slots_, qs_, ctx_, rows_, prompt_lens_, tables_, src_, dst_;
  std::vector<float> logits_, scratch_;
  // Draws on the device (one per sampled sequence and per fork child):
  std::vector<device_sample_row> dev_rows_;               // [draws]
  std::vector<std::pair<mirror*, int64_t>> dev_targets_;  // [draws]: whose draw, and its sequence id
  std::vector<int32_t> dev_ids_;                          // [draws]
  std::vector<float> dev_logprobs_;                       // [draws]
  std::vector<token_logprob> dev_top_;                    // [draws, sampling_max_logprobs]
  std::vector<mirror*> active_;
};

}  // namespace troupe
