// The contract between the engine and a backend that runs the model (CPU now, CUDA per GPU later): one
// call per step over a flattened batch that mixes prefill chunks and decode tokens.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "core/model_config.h"
#include "core/sampling.h"

namespace troupe {

// Views owned by the caller; valid for the duration of forward().
struct forward_batch {
  const int32_t* token_ids = nullptr;     // [num_tokens]: all sequences' tokens of this step, back to back
  const int32_t* positions = nullptr;     // [num_tokens]
  const int32_t* slot_mapping = nullptr;  // [num_tokens]: block * block_size + offset where K/V are written
  const int32_t* query_start = nullptr;   // [num_seqs + 1]: sequence s owns token rows [qs[s], qs[s+1])
  const int32_t* context_lens = nullptr;  // [num_seqs]: tokens in the cache for s after this step
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  const int32_t* logits_rows = nullptr;   // [num_logits]: token rows whose next-token logits are wanted
  // [num_seqs] or null: each sequence's original prompt length. Only dynamic NTK RoPE reads it: the token
  // at position p is rotated with the base for length max(p + 1, prompt_len), which is what Hugging Face
  // computes (one prefill forward over the prompt, then one forward per token) and which does not change
  // with chunking, batching or recompute. Null means "the whole sequence is the prompt" (context_lens).
  const int32_t* prompt_lens = nullptr;
  // [num_tokens] or null (asynchronous scheduling): pending_rows[t] >= 0 means token_ids[t] is not known on
  // the host yet: it is the id drawn in row pending_rows[t] (a device_sample_row index) of the previous
  // forward_sample_submit, which the backend reads on its device. -1: token_ids[t] holds the token.
  const int32_t* pending_rows = nullptr;
  int32_t num_tokens = 0;
  int32_t num_seqs = 0;
  int32_t max_blocks_per_seq = 0;
  int32_t num_logits = 0;
};

// One draw on the device: what sampler::sample reads for one sampled sequence. Views owned by the caller,
// valid for the duration of forward_sample().
struct device_sample_row {
  int32_t logits_row = 0;  // index among the batch's logits rows (the n > 1 children of a fork share one)
  const sampling_params* params = nullptr;
  uint64_t seed = 0;                    // the request's seed (see sampler::sample)
  uint64_t step = 0;                    // index of the output token being drawn: the RNG counter
  const int32_t* prompt_ids = nullptr;  // [num_prompt_ids]: history for the repetition penalty
  const int32_t* output_ids = nullptr;  // [num_output_ids]: history for all three penalties
  int32_t num_prompt_ids = 0;
  int32_t num_output_ids = 0;
};

class model_runner {
 public:
  virtual ~model_runner() = default;
  virtual const model_config& config() const = 0;
  virtual int32_t block_size() const = 0;
  virtual int32_t num_kv_blocks() const = 0;
  // Runs the model over the batch, writes K/V into the cache, and fills logits [num_logits, vocab_size]
  // (host memory, fp32).
  virtual void forward(const forward_batch& batch, float* logits) = 0;

  // Backends that sample where the logits live say so here, and then implement forward_sample: the model
  // as in forward(), then for each row i the draw sampler::sample would make from logits row
  // rows[i].logits_row with rows[i]'s parameters, history, seed and step: ids[i] (-1 when the row's logits
  // hold a NaN or +inf, or are all -inf, or the penalized temperature-scaled maximum is not finite),
  // logprobs[i] (its raw log-softmax), and top[i * sampling_max_logprobs + j] for j < min(logprobs,
  // vocab_size) (the best raw logprobs, descending, ties by lower id). No logits row leaves the device.
  virtual bool samples_on_device() const { return false; }
  virtual void forward_sample(const forward_batch& batch, const device_sample_row* rows, int32_t num_rows,
                              int32_t* ids,          // [num_rows]
                              float* logprobs,       // [num_rows]
                              token_logprob* top) {  // [num_rows, sampling_max_logprobs]
    (void)batch, (void)rows, (void)num_rows, (void)ids, (void)logprobs, (void)top;
    throw std::logic_error("this backend does not sample on its device");
  }
  // Asynchronous stepping: forward_sample in two halves, so that the host plans and submits step N+1
  // while the device still runs step N. forward_sample_submit enqueues the step (model and draws) and
  // returns without waiting; batch.pending_rows may name rows of the previous submitted step, whose ids
  // never came back to the host. forward_sample_collect waits for the oldest submitted step not collected
  // yet and writes its results exactly as forward_sample does. At most two steps are outstanding (submit
  // N+1, then collect N); the views of batch and rows are read only during submit. Backends without it
  // say false here, and the step executor runs their steps synchronously at submit time instead.
  virtual bool samples_async() const { return false; }
  virtual void forward_sample_submit(const forward_batch& batch, const device_sample_row* rows,
                                     int32_t num_rows) {
    (void)batch, (void)rows, (void)num_rows;
    throw std::logic_error("this backend does not step asynchronously");
  }
  virtual void forward_sample_collect(int32_t* ids,          // [num_rows of that submit]
                                      float* logprobs,       // [num_rows]
                                      token_logprob* top) {  // [num_rows, sampling_max_logprobs]
    (void)ids, (void)logprobs, (void)top;
    throw std::logic_error("this backend does not step asynchronously");
  }
  // Copies whole KV blocks src[i] -> dst[i] (copy-on-write of shared partial blocks).
  virtual void copy_blocks(const int32_t* src, const int32_t* dst, int32_t n) = 0;
  // Swap space in host memory for preemption by swapping: num_slots blocks' worth of K/V.
  virtual void reserve_host_blocks(int32_t num_slots) = 0;
  // device block src[i] -> host slot dst[i]
  virtual void swap_out(const int32_t* src, const int32_t* dst, int32_t n) = 0;
  // host slot src[i] -> device block dst[i]
  virtual void swap_in(const int32_t* src, const int32_t* dst, int32_t n) = 0;
};

}  // namespace troupe
