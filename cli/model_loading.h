// Shared by the commands that run a model: load the CPU runner and, when the directory has one, the
// tokenizer.
#pragma once

#include <memory>
#include <string>

#include "core/tokenizer.h"
#include "plugins/cpu/cpu_model_runner.h"

namespace troupe::cli {

struct loaded_model {
  std::unique_ptr<cpu_model_runner> runner;
  std::unique_ptr<tokenizer> tok;  // null when the directory has no tokenizer.json
};

loaded_model load_model(const std::string& dir, int32_t num_kv_blocks, int32_t threads);

}  // namespace troupe::cli
