// The CPU backend: the whole forward pass in fp32 from bf16/f16/f32 weights, over a paged KV cache laid
// out as the GPU path lays it out ([num_blocks, block_size, num_kv_heads, head_dim] per layer for K and V).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/plugin_api/model_runner.h"

namespace troupe {

struct cpu_runner_options {
  int32_t block_size = 16;
  int32_t num_kv_blocks = 0;  // 0: enough for max_kv_tokens
  int64_t max_kv_tokens = 0;  // 0: min(max_position_embeddings, 8192) tokens' worth
};

class cpu_model_runner final : public model_runner {
 public:
  // Reads config.json and the safetensors from model_dir, validates every tensor, converts to fp32.
  static std::unique_ptr<cpu_model_runner> load(const std::string& model_dir, const cpu_runner_options& opt);

  const model_config& config() const override { return cfg_; }
  int32_t block_size() const override { return block_size_; }
  int32_t num_kv_blocks() const override { return num_blocks_; }
  void forward(const forward_batch& batch, float* logits) override;
  void copy_blocks(const int32_t* src, const int32_t* dst, int32_t n) override;
  void reserve_host_blocks(int32_t num_slots) override;
  void swap_out(const int32_t* src, const int32_t* dst, int32_t n) override;
  void swap_in(const int32_t* src, const int32_t* dst, int32_t n) override;

 private:
  struct layer {
    std::vector<float> ln1, ln2;          // [hidden]
    std::vector<float> wqkv, bqkv;        // [q + 2 kv, hidden], [q + 2 kv] (bias empty when none)
    std::vector<float> wo, bo;            // [hidden, q], [hidden]
    std::vector<float> q_norm, k_norm;    // [head_dim] (Qwen3)
    std::vector<float> wgu, bgu;          // [2 * inter, hidden]: gate rows then up rows
    std::vector<float> wdown, bdown;      // [hidden, inter]
    std::vector<float> k_cache, v_cache;  // [num_blocks, block_size, num_kv_heads, head_dim]
    std::vector<float> k_host, v_host;    // [num_host_slots, block_size, num_kv_heads, head_dim] swap space
  };

  cpu_model_runner() = default;

  model_config cfg_;
  int32_t block_size_ = 16;
  int32_t num_blocks_ = 0;
  int32_t num_host_slots_ = 0;
  std::vector<float> embed_;    // [vocab, hidden]
  std::vector<float> lm_head_;  // [vocab, hidden]; empty when tied to embed_
  std::vector<float> final_norm_;
  std::vector<layer> layers_;
  std::vector<float> base_inv_freq_;  // for every rope type but dynamic
  // step buffers, grown as needed
  std::vector<float> x_, residual_, h_, qkv_, q_, k_, v_, attn_, o_, gu_, act_, sel_;
  std::vector<float> inv_freq_rows_;
};

}  // namespace troupe
