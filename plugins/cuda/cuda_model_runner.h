// The CUDA backend: the forward pass of kernels/cuda over bf16 weights uploaded once, a bf16 paged KV cache
// ([num_blocks, block_size, num_kv_heads, head_dim] per layer, the CPU runner's layout) sized from
// gpu_memory_utilization, and persistent step buffers that grow only when a step is larger than any
// before it. The attention plugin is chosen at load: "flash" (tensor-core prefill, split-K decode) or
// "paged" (CUDA-core PagedAttention decode; flash prefill for steps with prompt chunks).
#pragma once

#include <cuda_runtime_api.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/plugin_api/model_runner.h"
#include "kernels/cuda/ops.h"
#include "plugins/cuda/cuda_sampler.h"

namespace troupe {

struct cuda_runner_options {
  int32_t block_size = 16;
  int32_t num_kv_blocks = 0;            // 0: size the cache from gpu_memory_utilization
  double gpu_memory_utilization = 0.9;  // share of the device's memory this process may hold in total
  int64_t max_kv_tokens = 0;            // when > 0, caps the cache sized from memory
  std::string attention = "flash";      // "flash" or "paged"
  int device = 0;
  // Benchmarks: weights drawn on the GPU (normal, std 0.02; norm weights 1) instead of read from
  // safetensors; only config.json is needed.
  bool random_weights = false;
  uint64_t seed = 1;
  // Called after the embeddings and after each layer's weights reached the device: (layers done, layers,
  // bytes uploaded so far). For a progress line while a large checkpoint loads.
  std::function<void(int32_t, int32_t, int64_t)> on_progress;
  // Decode steps (one token per sequence, every sequence sampled) replay a CUDA graph captured per batch
  // bucket and context bucket instead of ~12 launches per layer. Off: every step launches (vLLM's
  // enforce_eager).
  bool cuda_graphs = true;
  // Largest decode batch that replays a graph (buckets up to 256); larger batches launch eagerly.
  int32_t max_graph_batch = 256;
  // forward_sample_submit / forward_sample_collect overlap the host's next step with this one (see
  // model_runner::samples_async). Off: the step executor runs each step to its end before the next.
  bool async_steps = true;
};

class cuda_model_runner final : public model_runner {
 public:
  // Reads config.json and the safetensors from model_dir, validates, uploads bf16 weights with q/k/v and
  // gate/up merged. Throws troupe::error on a bad checkpoint or an unsupported shape (with the reason).
  static std::unique_ptr<cuda_model_runner> load(const std::string& model_dir,
                                                 const cuda_runner_options& opt);
  ~cuda_model_runner() override;

  const model_config& config() const override { return cfg_; }
  int32_t block_size() const override { return block_size_; }
  int32_t num_kv_blocks() const override { return num_blocks_; }
  void forward(const forward_batch& batch, float* logits) override;
  bool samples_on_device() const override { return true; }
  void forward_sample(const forward_batch& batch, const device_sample_row* rows, int32_t num_rows,
                      int32_t* ids, float* logprobs, token_logprob* top) override;
  // Asynchronous steps (model_runner documents the contract): submit uploads from one of two pinned
  // staging buffers and enqueues the model and the draws; the previous step's ids stay on the device for
  // the token rows marked pending, which the embedding gathers. collect waits for the oldest step's event.
  bool samples_async() const override { return opt_.async_steps; }
  void forward_sample_submit(const forward_batch& batch, const device_sample_row* rows,
                             int32_t num_rows) override;
  void forward_sample_collect(int32_t* ids, float* logprobs, token_logprob* top) override;
  // For `troupe bench`: rows with greedy[i] != 0 get the argmax and its logprob in ids[i] and logprobs[i];
  // the other rows' logits go to `logits`, packed in row order ([rows without greedy, vocab_size], host
  // fp32).
  void forward_greedy(const forward_batch& batch, const uint8_t* greedy, float* logits, int32_t* ids,
                      float* logprobs);
  void copy_blocks(const int32_t* src, const int32_t* dst, int32_t n) override;
  void reserve_host_blocks(int32_t num_slots) override;
  void swap_out(const int32_t* src, const int32_t* dst, int32_t n) override;
  void swap_in(const int32_t* src, const int32_t* dst, int32_t n) override;

 private:
  using bf16 = kernels::cuda::bf16;
  // A device allocation owned by the runner; every one is freed in the destructor.
  template <typename T>
  T* device_alloc(size_t n);
  template <typename T>
  void grow(T*& buf, size_t& cap, size_t n);  // reallocates only when n exceeds the capacity

  struct layer {
    bf16 *ln1 = nullptr, *ln2 = nullptr;          // [hidden]
    bf16 *wqkv = nullptr, *bqkv = nullptr;        // [q + 2 kv, hidden], [q + 2 kv] or null
    bf16 *wo = nullptr, *bo = nullptr;            // [hidden, q], [hidden] or null
    bf16 *q_norm = nullptr, *k_norm = nullptr;    // [head_dim] or null (Qwen3)
    bf16 *wgu = nullptr, *bgu = nullptr;          // [2 * inter, hidden]: gate rows then up rows
    bf16 *wdown = nullptr, *bdown = nullptr;      // [hidden, inter]
    bf16 *k_cache = nullptr, *v_cache = nullptr;  // [num_blocks, block_size, num_kv_heads, head_dim]
    std::vector<bf16> k_host, v_host;             // [num_host_slots, block_size, nkv, head_dim] swap space
  };

  cuda_model_runner() = default;

  model_config cfg_;
  cuda_runner_options opt_;
  int32_t block_size_ = 16;
  int32_t num_blocks_ = 0;
  int32_t num_host_slots_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<kernels::cuda::gemm_context> gemm_;
  std::vector<void*> allocations_;
  bf16* embed_ = nullptr;       // [vocab, hidden]
  bf16* lm_head_ = nullptr;     // [vocab, hidden]; embed_ when tied
  bf16* final_norm_ = nullptr;  // [hidden]
  std::vector<layer> layers_;
  float* base_inv_freq_ = nullptr;  // [head_dim / 2]

  // Step buffers (capacity in elements next to each).
  int32_t* ints_ = nullptr;  // the step's integer inputs, one upload per step
  size_t ints_cap_ = 0;
  int32_t* ints_host_ = nullptr;  // the pinned staging buffer of the step being built: ints_stage_[stage_]
  int32_t* ints_stage_[2] = {nullptr, nullptr};  // two, so that a step is built while the last one uploads
  size_t ints_host_cap_ = 0;                     // of each
  int stage_ = 0;
  // The sampled ids of the last submitted step, on the device: pending token rows of the next step read
  // them (forward_batch::pending_rows). [pending_ids_cap_]
  int32_t* pending_ids_ = nullptr;
  size_t pending_ids_cap_ = 0;
  int32_t last_num_rows_ = -1;  // rows of the last submitted step (-1: none since the last collect-all)
  struct outstanding_step {
    int slot = 0;
  };
  std::vector<outstanding_step> outstanding_;  // submitted, not collected; oldest first (at most 2)
  float* inv_freq_rows_ = nullptr;             // [num_tokens, head_dim / 2] (dynamic NTK only)
  size_t inv_freq_rows_cap_ = 0;
  float* residual_ = nullptr;         // [num_tokens, hidden]: the residual stream stays fp32
  bf16 *x_ = nullptr, *h_ = nullptr;  // [num_tokens, hidden] each
  size_t residual_cap_ = 0, x_cap_ = 0, h_cap_ = 0;
  bf16* qkv_ = nullptr;  // [num_tokens, q + 2 kv]
  size_t qkv_cap_ = 0;
  bf16* attn_ = nullptr;  // [num_tokens, q]
  size_t attn_cap_ = 0;
  bf16* gu_ = nullptr;  // [num_tokens, 2 * inter]
  size_t gu_cap_ = 0;
  bf16* act_ = nullptr;  // [num_tokens, inter]
  size_t act_cap_ = 0;
  bf16* sel_ = nullptr;  // [num_logits, hidden]
  size_t sel_cap_ = 0;
  float* logits_ = nullptr;  // [num_logits, vocab]
  size_t logits_cap_ = 0;
  int32_t* greedy_ids_ = nullptr;  // [num_logits] argmax per row (device)
  float* greedy_lp_ = nullptr;     // [num_logits] its logprob (device)
  size_t greedy_cap_ = 0, greedy_lp_cap_ = 0;
  int32_t* greedy_ids_host_ = nullptr;  // pinned copies of the two above
  float* greedy_lp_host_ = nullptr;
  size_t greedy_host_cap_ = 0;
  std::unique_ptr<cuda_sampler> sampler_;  // forward_sample's, made on first use
  // The model up to the logits of the wanted rows, in logits_ on the device (stream not synchronized).
  void run_to_logits(const forward_batch& batch);
  // A step's sizes and its inputs on the device.
  struct step_shape {
    int64_t T = 0, S = 0, n_logits = 0;
    int32_t max_q = 0, max_ctx = 0, max_blocks = 0;
    const int32_t *d_tokens = nullptr, *d_pos = nullptr, *d_slots = nullptr, *d_qs = nullptr,
                  *d_ctx = nullptr, *d_tables = nullptr, *d_rows = nullptr;
    const int32_t* d_pending = nullptr;  // [T] or null: forward_batch::pending_rows
    const float* inv_freq = nullptr;
    int64_t inv_stride = 0;
  };
  void ensure_step_buffers(int64_t T, int64_t n_logits, int32_t max_ctx);
  void ensure_ints(size_t n_ints);
  void next_stage();  // the other staging buffer for the next step
  void check_pending(const forward_batch& b) const;
  void launch_model(const step_shape& sh);
  // A decode step through a captured graph (capturing it first when needed); false when the step does
  // not qualify, and then nothing was launched.
  bool run_graph(const forward_batch& batch, int32_t max_ctx);
  struct graph_entry {
    cudaGraphExec_t exec = nullptr;
    uint64_t gen = 0;  // buffers_gen_ at capture
  };
  std::map<std::pair<int32_t, int32_t>, graph_entry> graphs_;  // (batch bucket, context bucket)
  uint64_t buffers_gen_ = 0;                                   // bumped whenever a step buffer is reallocated
  float* workspace_ = nullptr;                                 // split-K attention partials
  size_t workspace_cap_ = 0;
};

}  // namespace troupe
