// The model's shape and numerics, read from a Hugging Face config.json. Everything downstream (loader,
// engine, kernels) takes its sizes from here.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace troupe {

enum class model_arch { llama, mistral, qwen2, qwen3 };
const char* arch_name(model_arch a);

enum class rope_type { none, linear, dynamic, llama3 };
const char* rope_type_name(rope_type t);

struct rope_config {
  rope_type type = rope_type::none;
  double theta = 10000.0;
  double factor = 1.0;  // linear / dynamic / llama3
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
};

struct model_config {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  model_arch arch = model_arch::llama;
  int32_t vocab_size = 0;
  int32_t hidden_size = 0;
  int32_t intermediate_size = 0;
  int32_t num_layers = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (Qwen2; Llama's optional attention_bias)
  bool mlp_bias = false;
  bool qk_norm = false;                   // per-head RMSNorm on q and k before RoPE (Qwen3)
  std::optional<int32_t> sliding_window;  // only when the model actually uses one
  rope_config rope;
  std::vector<int32_t> eos_token_ids;  // config.json's eos_token_id (int or list)
  std::optional<int32_t> bos_token_id;
  std::string torch_dtype;  // as declared; the loader trusts the tensors' own dtypes

  // The longest sequence served: max_position_embeddings, times the factor for linear and dynamic RoPE
  // scaling (which exist to stretch the trained context), as vLLM derives it.
  int64_t max_model_len() const;

  int32_t q_size() const { return num_heads * head_dim; }
  int32_t kv_size() const { return num_kv_heads * head_dim; }

  // Parses and validates; throws troupe::error with `source` (a path) in the message.
  static model_config from_json(const nlohmann::json& j, const std::string& source);
  static model_config load(const std::string& config_json_path);
};

// The RoPE inverse frequencies (head_dim/2 of them) for a forward whose longest sequence is `seq_len`
// positions long. Only the dynamic type depends on seq_len (Hugging Face recomputes its base when the
// sequence outgrows max_position_embeddings).
std::vector<float> rope_inv_freq(const model_config& c, int64_t seq_len);

// Dynamic NTK RoPE in a batch: the token at position p of a sequence whose prompt has floor_len tokens is
// rotated with rope_inv_freq(c, max(p + 1, floor_len)) (what Hugging Face computes: one forward over the
// prompt, then one per token), written to rows[t * head_dim / 2 ...]. Consecutive tokens of one length
// share one computation. Both runners call this, so the CPU and CUDA frequencies are the same floats.
void rope_inv_freq_rows(const model_config& c, int32_t num_seqs,
                        const int32_t* query_start,  // [num_seqs + 1]
                        const int32_t* positions,    // [num_tokens]
                        const int32_t* floor_lens,   // [num_seqs]
                        float* rows);                // [num_tokens, head_dim / 2]

}  // namespace troupe
