// The contract between the engine and a backend that runs the model (CPU now, CUDA per GPU later): one
// call per step over a flattened batch that mixes prefill chunks and decode tokens.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "core/model_config.h"

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
  int32_t num_tokens = 0;
  int32_t num_seqs = 0;
  int32_t max_blocks_per_seq = 0;
  int32_t num_logits = 0;
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

  // Backends that can reduce greedy rows where the logits live say so here, and then implement
  // forward_greedy: for each logits row i with greedy[i] != 0, ids[i] = the argmax (the lowest id among
  // equal maxima, as sampler::sample picks) and logprobs[i] = its raw log-softmax (ids[i] = -1 when the row
  // holds a NaN or +inf); the other rows' logits go to `logits`, packed in row order ([rows without
  // greedy, vocab_size], host fp32). A greedy step then moves 8 bytes per sequence instead of a row.
  virtual bool samples_greedy_on_device() const { return false; }
  virtual void forward_greedy(const forward_batch& batch, const uint8_t* greedy, float* logits, int32_t* ids,
                              float* logprobs) {
    (void)batch, (void)greedy, (void)logits, (void)ids, (void)logprobs;
    throw std::logic_error("this backend does not sample on its device");
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
