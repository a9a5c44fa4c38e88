// A synchronous engine over one model_runner: batched generation (prefill chunks, then decode steps for
// every unfinished sequence) and teacher-forced scoring. It is what `troupe generate` and `troupe score`
// run, and the reference the scheduler-driven server must agree with token for token.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/kv/block_pool.h"
#include "core/plugin_api/model_runner.h"
#include "core/sampling.h"

namespace troupe {

class tokenizer;

struct generate_request {
  std::vector<int32_t> prompt_ids;
  sampling_params params;
};

struct generate_output {
  std::vector<int32_t> ids;
  std::string text;  // detokenized output (empty without a tokenizer); ends before a matched stop string
  // Per output token: the params.logprobs best raw logprobs, descending; the sampled token is appended
  // when it is not among them. Empty when params.logprobs == 0.
  std::vector<std::vector<token_logprob>> logprobs;
  std::vector<float> token_logprobs;  // the sampled token's raw logprob at each step
  std::string finish_reason;          // "stop" (eos, stop id or stop string) or "length"
  uint64_t seed = 0;                  // the seed used (drawn when the request had none)
};

struct score_output {
  std::vector<float> logprobs;                  // [n - 1]: log p(ids[t] | ids[:t]) for t >= 1
  std::vector<std::vector<token_logprob>> top;  // [n - 1]: top-k of the distribution that predicted ids[t]
  double perplexity = 0;                        // exp(-mean(logprobs))
};

struct engine_options {
  int32_t max_num_batched_tokens = 2048;  // prefill tokens per step (prompts are chunked to fit)
  int64_t max_model_len = 0;              // 0: the model's own (model_config::max_model_len)
};

class offline_engine {
 public:
  // tok may be null: then no text is produced and stop strings are refused.
  offline_engine(model_runner& runner, const tokenizer* tok, engine_options opt = {});

  // Every request is validated first; all problems of all requests are reported in one troupe::error.
  std::vector<generate_output> generate(const std::vector<generate_request>& requests);

  score_output score(const std::vector<int32_t>& ids, int32_t top_k);

  // EOS ids: config.json's eos_token_id plus the tokenizer's eos token.
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  int64_t max_model_len() const { return max_len_; }
  int32_t num_blocks_free() const { return pool_.num_blocks_free(); }

 private:
  struct sequence;
  void run_step(std::vector<sequence*>& seqs, std::vector<int32_t>& n_compute, std::vector<float>& logits);
  void ensure_blocks(sequence& s, int32_t num_tokens);
  void free_blocks(sequence& s);

  model_runner& runner_;
  const tokenizer* tok_;
  engine_options opt_;
  block_pool pool_;
  std::vector<int32_t> eos_ids_;
  int64_t max_len_ = 0;
};

}  // namespace troupe
