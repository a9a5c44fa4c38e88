// Per-request sampling parameters and the CPU sampler that turns one row of logits into a token.
// Semantics follow vLLM v1 (see sampler::sample); the CUDA sampler must match this one token for token.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace troupe {

struct sampling_params {
  float temperature = 1.0f;         // 0 (below 1e-5, as in vLLM) => greedy
  int32_t top_k = 0;                // 0 or -1: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // over prompt + output tokens; 1: off
  float presence_penalty = 0.0f;    // over output tokens only
  float frequency_penalty = 0.0f;   // over output tokens only
  std::optional<uint64_t> seed;     // unset: the engine picks one per request
  int32_t logprobs = 0;             // how many top logprobs to return per token, 0..20
  // Compute the sampled token's logprob. Off (and logprobs == 0) skips the log-softmax over the
  // vocabulary, the largest per-token cost of CPU sampling; the gateway turns it off unless asked.
  bool need_logprob = true;
  int32_t max_tokens = 16;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  int32_t n = 1;

  // Every problem at once, one sentence each naming the field and its allowed range; empty when valid.
  std::vector<std::string> validate(int32_t vocab_size) const;

  bool is_greedy() const;
  // Any of the repetition, presence or frequency penalties is on (the draw reads the history).
  bool has_penalties() const;
};

// Below this temperature sampling is greedy (vLLM's _SAMPLING_EPS): dividing by a tinier value only
// amplifies float noise.
constexpr float sampling_greedy_temperature = 1e-5f;
constexpr int32_t sampling_max_logprobs = 20;
constexpr int32_t sampling_max_n = 64;
constexpr int32_t sampling_max_stop_strings = 16;

struct token_logprob {
  int32_t id;
  float logprob;
};

struct sample_result {
  int32_t id;                      // the chosen token
  float logprob;                   // its log_softmax over the raw logits (0 when not needed)
  std::vector<token_logprob> top;  // p.logprobs best raw logprobs, descending, ties by lower id
};

// Stateless and thread-safe: all working memory comes from the caller's scratch.
class sampler {
 public:
  // logits: [vocab_size] raw model output for one sequence. seed: the request's seed (p.seed when set,
  // otherwise one the engine drew at admission; p.seed itself is not read here). step: the index of the
  // output token being drawn, so the draw depends only on (seed, step). scratch: reused across calls,
  // grows to 4 * vocab_size floats once and never allocates again.
  //
  // Order (vLLM v1): logprobs from log_softmax of the raw logits; repetition penalty (prompt + output,
  // positive logits divided, negative multiplied), frequency and presence penalties (output only);
  // greedy argmax (ties -> lowest id) when the temperature is ~0; else divide by the temperature, keep
  // the top-k, then the smallest top-p prefix whose mass >= top_p (at least one token), then drop
  // tokens with prob < min_p * max prob, and draw by inverse CDF: one uniform u = uniform_double(seed,
  // step), walking the kept tokens in ascending id order until the cumulative unnormalized mass exceeds
  // u * total. Ascending-id order (not probability order) makes the walk a plain masked prefix sum,
  // which a GPU kernel can reproduce without sorting.
  sample_result sample(const float* logits, int32_t vocab_size, const sampling_params& p,
                       const std::vector<int32_t>& prompt_ids, const std::vector<int32_t>& output_ids,
                       uint64_t seed, uint64_t step, std::vector<float>& scratch) const;
};

// The penalty step of sampler::sample, exposed for tests and the GPU port: repetition over prompt +
// output (each distinct token once: positive logits divided, others multiplied), then
// logit -= frequency * count + presence * (count > 0) over output tokens, in vLLM v1's order.
// logits: [vocab_size], changed in place; work: [vocab_size] scratch, clobbered.
void apply_penalties(float* logits, int32_t vocab_size, const sampling_params& p,
                     const std::vector<int32_t>& prompt_ids, const std::vector<int32_t>& output_ids,
                     float* work);

// log_softmax(logits), exactly as the sampler computes logprobs (for tests and prompt scoring).
std::vector<float> log_softmax(const float* logits, int32_t vocab_size);

}  // namespace troupe
