// The request mix of `troupe bench serve`: prompt and output lengths (random, shared prefix + random
// suffix, or ShareGPT conversations) and the arrival schedule. Pure functions of their inputs and a seeded
// generator, so a run is reproducible and the sampling is unit-tested.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace troupe::cli::bench_serve {

// One request to send: token ids (exact input length) or text (ShareGPT), and the output length asked for.
struct sample_request {
  std::vector<int32_t> prompt_ids;  // [prompt_len] when built from ids; empty when prompt_text is used
  std::string prompt_text;
  int32_t prompt_len = 0;  // tokens, as the dataset counted them
  int32_t output_len = 0;  // max_tokens (with ignore_eos, the exact output length)
};

// [floor(len * (1 - r)), floor(len * (1 + r))] as vLLM's --random-range-ratio, never below `min_len`.
std::pair<int32_t, int32_t> length_bounds(int32_t len, double range_ratio, int32_t min_len);
// n lengths uniform over length_bounds(len, range_ratio, min_len).
std::vector<int32_t> sample_lengths(int32_t len, double range_ratio, int32_t min_len, int32_t n,
                                    std::mt19937_64& rng);

// n requests of prefix_len shared ids followed by a random suffix of about input_len ids, asking for
// about output_len tokens. Ids are drawn uniformly from `vocab_ids` (which must not be empty); the
// prefix is drawn once, so every request shares it (and, past one KV block, hits the prefix cache).
std::vector<sample_request> make_random_requests(int32_t n, int32_t input_len, int32_t output_len,
                                                 double range_ratio, int32_t prefix_len,
                                                 const std::vector<int32_t>& vocab_ids, std::mt19937_64& rng);

// A ShareGPT conversation's first two turns (conversations with fewer are left out when reading).
struct prompt_completion {
  std::string prompt, completion;
};
// Reads a ShareGPT JSON file: [{"conversations": [{"from": .., "value": ..}, ...]}, ...]. Throws
// troupe::error naming the file when it is not such a list.
std::vector<prompt_completion> read_sharegpt(const std::string& path);

// vLLM's filter: shuffles with rng, then keeps pairs in order while fewer than n are kept, skipping
// those with a prompt or completion under 4 tokens, a prompt over 1024 tokens or both over 2048.
// count_prompt / count_completion give token counts (the prompt with special tokens, as the server
// tokenizes it). When fewer than n pass, the kept ones are reused in turn to make n.
// Throws troupe::error when none pass.
std::vector<sample_request> sample_sharegpt(
    std::vector<prompt_completion> pairs, int32_t n,
    const std::function<int32_t(const std::string&)>& count_prompt,
    const std::function<int32_t(const std::string&)>& count_completion, std::mt19937_64& rng);

// Send times in seconds from the start, first at 0: gaps are gamma-distributed with shape `burstiness`
// and mean 1 / rate (burstiness 1 is a Poisson process; lower is burstier). An infinite rate sends all
// at 0.
std::vector<double> arrival_times(int32_t n, double rate, double burstiness, std::mt19937_64& rng);

}  // namespace troupe::cli::bench_serve
