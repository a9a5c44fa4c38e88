// The worker side of a step, independent of the backend: keeps a mirror of each sequence (history for
// penalties, block table), applies the plan's diffs, swaps and copies, builds the forward_batch, runs the
// model_runner and samples. A worker actor owns one; a GPU worker will swap the sampler for its own.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
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

  model_runner& runner_;
  std::unordered_map<int64_t, mirror> mirrors_;
  sampler sampler_;
  // step buffers, reused
  std::vector<int32_t> ids_, pos_, slots_, qs_, ctx_, rows_, prompt_lens_, tables_, src_, dst_;
  std::vector<float> logits_, scratch_;
  std::vector<uint8_t> greedy_;      // [rows]: reduced on the device (runners that can)
  std::vector<int32_t> dev_ids_;     // [rows]: the device's argmax
  std::vector<float> dev_logprobs_;  // [rows]: and its logprob
  std::vector<mirror*> active_;
};

}  // namespace troupe
