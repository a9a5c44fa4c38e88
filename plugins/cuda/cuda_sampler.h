// The CUDA runner's sampler: device_sample_rows in, sampled ids out, with kernels::cuda::sample_rows doing
// sampler::sample's work where the logits are. Per step it uploads, in one copy from pinned memory, the
// rows' parameters and their penalty lists (per row the distinct ids of prompt + output with their output
// counts, only for rows whose penalties are on), and brings back ids, logprobs and top logprobs in one copy.
// Every buffer, pinned or device, is reused and grows geometrically: a steady step allocates nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/plugin_api/model_runner.h"

namespace troupe {

class cuda_sampler {
 public:
  explicit cuda_sampler(int32_t vocab_size);
  ~cuda_sampler();
  cuda_sampler(const cuda_sampler&) = delete;
  cuda_sampler& operator=(const cuda_sampler&) = delete;

  // logits: [num_logits, vocab_size] fp32 on the device, written by work already queued on `stream`.
  // Fills ids, logprobs and top as model_runner::forward_sample documents; returns once they are on the
  // host (the stream is synchronized). Throws troupe::error on a bad row (a history id outside the
  // vocabulary, a logits row out of range, more top logprobs than sampling_max_logprobs).
  void sample(const float* logits, int32_t num_logits, const device_sample_row* rows, int32_t num_rows,
              int32_t* ids, float* logprobs, token_logprob* top, cudaStream_t stream);

  // The same in two halves, for asynchronous steps (two may be outstanding, each in its own slot 0 or 1).
  // launch enqueues the draws and the copy back on `stream` and returns at once (rows are read only here);
  // when ids_copy is non-null the sampled ids also stay there on the device, for the next step's inputs.
  // finish waits for that slot's draws and writes ids, logprobs and top.
  void launch(const float* logits, int32_t num_logits, const device_sample_row* rows, int32_t num_rows,
              int slot, int32_t* ids_copy, cudaStream_t stream);
  void finish(int slot, int32_t* ids, float* logprobs, token_logprob* top);

 private:
  // Reallocates (pinned when `pinned`) only when n bytes exceed the capacity; grows by at least 1.5x.
  void reserve(void*& buf, size_t& cap, size_t n, bool pinned, cudaStream_t stream);

  int32_t vocab_;
  // Penalty list building: per vocabulary id, the row (epoch) that last saw it and its entry index.
  std::vector<uint32_t> seen_;  // [vocab]
  std::vector<int32_t> entry_;  // [vocab]
  uint32_t epoch_ = 0;
  // Per outstanding step (slot): the host side of its upload and of its results, and what finish needs.
  // The device buffers are single: work on the stream is ordered, so step N + 1's upload lands after step
  // N's draws have read theirs, and its draws write after step N's results were copied back.
  struct slot_state {
    void* in_host = nullptr;                   // pinned: [rows params | penalty ids | penalty counts]
    void* out_host = nullptr;                  // pinned: [ids | logprobs | top ids | top logprobs]
    size_t in_host_cap = 0, out_host_cap = 0;  // bytes
    cudaEvent_t done = nullptr;                // recorded after the copy back
    int32_t num_rows = 0;
    std::vector<int32_t> num_top;  // [num_rows]: top logprobs each row asked for
    bool pending = false;          // launched, not finished
  };
  slot_state slots_[2];
  void* in_dev_ = nullptr;    // [rows params | penalty ids | penalty counts]
  void* out_dev_ = nullptr;   // [ids | logprobs | top ids | top logprobs]
  void* work_dev_ = nullptr;  // [work slots, 2, vocab] fp32: the kernel's workspace
  size_t in_dev_cap_ = 0, out_dev_cap_ = 0, work_cap_ = 0;  // bytes
};

}  // namespace troupe
