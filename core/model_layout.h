// Which tensors a Llama-family checkpoint must hold, with their shapes, and the check that a checkpoint
// holds exactly those (one clear error per problem kind, naming the file and tensor).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/safetensors.h"

namespace troupe {

struct expected_tensor {
  std::string name;
  std::vector<int64_t> shape;
  bool optional = false;  // e.g. lm_head.weight when embeddings are tied
};

std::vector<expected_tensor> expected_tensors(const model_config& c);

// Throws troupe::error on: a missing tensor, an unexpected tensor, a wrong shape, or a dtype other than
// BF16/F16/F32. Ignores buffers HF never loads (rotary_emb.inv_freq).
void validate_checkpoint(const checkpoint& ckpt, const model_config& c);

// A checkpoint tensor converted to fp32 (throws naming tensor and file on a missing one or a bad dtype).
std::vector<float> load_tensor_f32(const checkpoint& ckpt, const std::string& name);
// Tensors stacked along dim 0 in fp32, e.g. q, k, v into one [q + 2 kv, hidden] matrix for one GEMM.
std::vector<float> stack_tensors_f32(const checkpoint& ckpt, const std::vector<std::string>& names);

// Names of one layer's tensors, shared by every backend.
std::string layer_tensor(int layer, const std::string& suffix);

}  // namespace troupe
