// Shared by the commands that run a model: pick the backend (--device cpu|cuda|auto), load its runner and,
// when the directory has one, the tokenizer.
#pragma once

#include <memory>
#include <string>

#include "core/plugin_api/model_runner.h"
#include "core/tokenizer.h"

namespace troupe::cli {

class arg_parser;

struct model_load_options {
  std::string device = "cpu";       // "cpu", "cuda" or "auto" (cuda when built with it and a GPU is present)
  std::string attention = "flash";  // cuda only: "flash" or "paged"
  int32_t num_kv_blocks = 0;        // 0: the backend's default (cpu: max_kv_tokens; cuda: from memory)
  int32_t threads = 0;              // cpu only; 0: all cores
  double gpu_memory_utilization = 0.9;  // cuda only: share of device memory for weights + KV cache
  bool show_progress = false;           // a progress line on stderr while the weights load
  bool cuda_graphs = true;              // cuda only: replay decode steps from captured graphs
};

struct loaded_model {
  std::unique_ptr<model_runner> runner;
  std::unique_ptr<tokenizer> tok;  // null when the directory has no tokenizer.json
  std::string device;              // the backend actually loaded: "cpu" or "cuda"
};

// A command that loads a model declares the value flags "device" and "attention"; this reads them:
// --device (default "auto") and --attention (default "flash") from a parsed command line.
model_load_options model_load_options_from(const arg_parser& ap);

// Throws troupe::error on a bad device or attention name, on --device cuda in a build without CUDA or on a
// machine without a GPU, and on a bad checkpoint.
loaded_model load_model(const std::string& dir, const model_load_options& opt);
// The CPU runner, as before the device choice existed.
loaded_model load_model(const std::string& dir, int32_t num_kv_blocks, int32_t threads);

// True when this binary was built with the CUDA backend.
bool cuda_built();
// Number of CUDA devices visible (0 in a build without CUDA or when the driver finds none).
int cuda_device_count();

}  // namespace troupe::cli
