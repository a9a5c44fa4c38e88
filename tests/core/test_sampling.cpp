#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/sampling.h"
#include "core/sampling_weight.h"
#include "tests/common/test_seed.h"

namespace troupe {
namespace {

std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(static_cast<float>(std::log(p)));
  return out;
}

// Counts of `draws` seeded samples (steps 0..draws-1 of one fresh seed).
std::vector<int> histogram(const std::vector<float>& logits, const sampling_params& p, int draws,
                           uint64_t seed, const std::vector<int32_t>& output_ids = {}) {
  sampler s;
  std::vector<float> scratch;
  std::vector<int> counts(logits.size(), 0);
  const auto v = static_cast<int32_t>(logits.size());
  for (int i = 0; i < draws; ++i)
    ++counts[s.sample(logits.data(), v, p, {}, output_ids, seed, i, scratch).id];
  return counts;
}

// Tokens outside the expected support must never be drawn; the others must land within 5 standard
// deviations of their expected frequency (a wrong kept set or a missing renormalization moves some
// frequency by 10+ standard deviations in every test below).
void expect_distribution(const std::vector<int>& counts, std::vector<double> expected, uint64_t seed) {
  const double sum = std::accumulate(expected.begin(), expected.end(), 0.0);
  const double draws = std::accumulate(counts.begin(), counts.end(), 0.0);
  for (size_t i = 0; i < counts.size(); ++i) {
    const double p = expected[i] / sum;
    if (p == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is outside the kept set; seed " << seed;
      continue;
    }
    const double sd = std::sqrt(p * (1 - p) / draws);
    EXPECT_NEAR(counts[i] / draws, p, 5 * sd) << "token " << i << " seed " << seed;
  }
}

uint64_t fresh_seed() { return test::fresh_seed64(); }

TEST(sampling_params, defaults_are_valid) { EXPECT_TRUE(sampling_params{}.validate(32000).empty()); }

TEST(sampling_params, edge_values_are_valid) {
  sampling_params p;
  p.temperature = 0;
  p.top_k = -1;
  p.top_p = 1;
  p.min_p = 1;
  p.repetition_penalty = 10;
  p.presence_penalty = -2;
  p.frequency_penalty = 2;
  p.logprobs = 20;
  p.max_tokens = 1;
  p.n = 64;
  p.stop_token_ids = {0, 31999};
  p.stop = std::vector<std::string>(16, "x");
  EXPECT_TRUE(p.validate(32000).empty());
  p.top_k = 1;
  p.temperature = 100;
  p.top_p = 1e-6f;
  EXPECT_TRUE(p.validate(32000).empty());
}

TEST(sampling_params, validate_lists_every_problem) {
  sampling_params p;
  p.temperature = -0.5f;
  p.top_k = -2;
  p.top_p = 0;
  p.min_p = 1.5f;
  p.repetition_penalty = 0;
  p.presence_penalty = 2.5f;
  p.frequency_penalty = -3;
  p.logprobs = 21;
  p.max_tokens = 0;
  p.n = 65;
  p.stop_token_ids = {5, -1, 100};
  p.stop = std::vector<std::string>(17, "end");
  p.stop[3] = "";
  const auto problems = p.validate(100);
  const std::vector<std::string> expected = {
      "temperature must be in [0, 100] (0 means greedy) (got -0.5)",
      "top_k must be -1 or 0 (off) or >= 1 (got -2)",
      "top_p must be in (0, 1] (got 0)",
      "min_p must be in [0, 1] (got 1.5)",
      "repetition_penalty must be in (0, 10] (got 0)",
      "presence_penalty must be in [-2, 2] (got 2.5)",
      "frequency_penalty must be in [-2, 2] (got -3)",
      "logprobs must be in [0, 20] (got 21)",
      "max_tokens must be >= 1 (got 0)",
      "n must be in [1, 64] (got 65)",
      "stop_token_ids[1] must be a token id in [0, 100) (got -1)",
      "stop_token_ids[2] must be a token id in [0, 100) (got 100)",
      "stop must hold at most 16 strings (got 17)",
      "stop[3] must be a non-empty string",
  };
  EXPECT_EQ(problems, expected);
}

TEST(sampling_params, validate_rejects_nan_and_inf) {
  sampling_params p;
  p.temperature = std::nanf("");
  p.top_p = std::numeric_limits<float>::infinity();
  p.min_p = std::nanf("");
  p.repetition_penalty = std::numeric_limits<float>::infinity();
  p.presence_penalty = -std::numeric_limits<float>::infinity();
  p.frequency_penalty = std::nanf("");
  const auto problems = p.validate(10);
  ASSERT_EQ(problems.size(), 6u);
  EXPECT_EQ(problems[0], "temperature must be in [0, 100] (0 means greedy) (got nan)");
  EXPECT_EQ(problems[1], "top_p must be in (0, 1] (got inf)");
  EXPECT_EQ(problems[4], "presence_penalty must be in [-2, 2] (got -inf)");
  p = sampling_params{};
  p.temperature = 101;
  p.repetition_penalty = 10.5f;
  EXPECT_EQ(p.validate(10).size(), 2u);
}

TEST(sampler, logprobs_are_log_softmax_of_raw_logits) {
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f};
  sampling_params p;
  p.temperature = 0;
  p.logprobs = 3;
  // The penalty turns 3.0 into 0.75 for ids 1 and 3 and so changes the choice, never the logprobs.
  p.repetition_penalty = 4;
  sampler s;
  std::vector<float> scratch;
  const auto r = s.sample(logits.data(), 5, p, {1, 3}, {}, 1, 0, scratch);
  // lse = log(e + 2 e^3 + e^-2 + e^0.5) = 3.799378519927537
  EXPECT_EQ(r.id, 0);
  EXPECT_FLOAT_EQ(r.logprob, -2.799378519927537f);
  ASSERT_EQ(r.top.size(), 3u);
  EXPECT_EQ(r.top[0].id, 1);  // ties by lower id
  EXPECT_EQ(r.top[1].id, 3);
  EXPECT_EQ(r.top[2].id, 0);
  EXPECT_FLOAT_EQ(r.top[0].logprob, -0.799378519927537f);
  EXPECT_FLOAT_EQ(r.top[1].logprob, -0.799378519927537f);
  EXPECT_FLOAT_EQ(r.top[2].logprob, -2.799378519927537f);
  const auto all = log_softmax(logits.data(), 5);
  EXPECT_FLOAT_EQ(all[2], -5.7993785199275365f);
  EXPECT_FLOAT_EQ(all[4], -3.299378519927537f);

  p.logprobs = 0;
  EXPECT_TRUE(s.sample(logits.data(), 5, p, {}, {}, 1, 0, scratch).top.empty());
  p.logprobs = 20;  // more than the vocabulary: all of it, sorted
  const auto r20 = s.sample(logits.data(), 5, p, {}, {}, 1, 0, scratch);
  ASSERT_EQ(r20.top.size(), 5u);
  EXPECT_EQ(r20.top[3].id, 4);
  EXPECT_EQ(r20.top[4].id, 2);
  EXPECT_FLOAT_EQ(r20.top[4].logprob, -5.7993785199275365f);
}

TEST(sampler, top_logprobs_match_a_full_sort_on_a_large_vocab) {
  const uint64_t seed = fresh_seed();
  std::mt19937_64 gen(seed);
  std::vector<float> logits(50000);
  // A coarse grid makes ties common, so the tie rule is exercised.
  for (auto& x : logits) x = std::uniform_int_distribution<int>(-400, 400)(gen) / 40.0f;
  sampling_params p;
  p.logprobs = 20;
  sampler s;
  std::vector<float> scratch;
  const auto r = s.sample(logits.data(), 50000, p, {}, {}, seed, 0, scratch);
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  const auto all = log_softmax(logits.data(), 50000);
  ASSERT_EQ(r.top.size(), 20u);
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(r.top[i].id, order[i]) << i << " seed " << seed;
    EXPECT_EQ(r.top[i].logprob, all[order[i]]);
  }
  EXPECT_EQ(r.logprob, all[r.id]);
}

TEST(sampler, greedy_is_argmax_with_ties_to_lowest_id) {
  sampler s;
  std::vector<float> scratch;
  sampling_params p;
  p.temperature = 0;
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f};
  const auto r = s.sample(logits.data(), 5, p, {}, {}, 0, 0, scratch);
  EXPECT_EQ(r.id, 1);
  EXPECT_EQ(r.logprob, log_softmax(logits.data(), 5)[1]);

  const uint64_t seed = fresh_seed();
  std::mt19937_64 gen(seed);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<float> l(1000);
    for (auto& x : l) x = std::uniform_int_distribution<int>(-20, 20)(gen) * 0.5f;
    const int32_t want = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    // Greedy ignores the seed and the step.
    EXPECT_EQ(s.sample(l.data(), 1000, p, {}, {}, gen(), gen(), scratch).id, want) << "seed " << seed;
  }
}

TEST(sampler, repetition_penalty_divides_positive_and_multiplies_negative_logits_once) {
  const std::vector<float> logits = {2.0f, -1.0f, 0.0f, 1.0f, -3.0f};
  sampling_params p;
  p.repetition_penalty = 2;
  std::vector<float> adj = logits, work(5);
  // id 0 three times (prompt and output) and id 1 twice: each is penalized exactly once.
  apply_penalties(adj.data(), 5, p, {0, 1, 0, 2}, {0, 1}, work.data());
  EXPECT_EQ(adj, (std::vector<float>{1.0f, -2.0f, 0.0f, 1.0f, -3.0f}));

  // And through the sampler: 2.0 / 2 = 1.0 ties with id 3, the lower id wins; with 2.5, id 3 wins.
  p.temperature = 0;
  sampler s;
  std::vector<float> scratch;
  EXPECT_EQ(s.sample(logits.data(), 5, p, {0}, {}, 0, 0, scratch).id, 0);
  p.repetition_penalty = 2.5f;
  EXPECT_EQ(s.sample(logits.data(), 5, p, {0}, {}, 0, 0, scratch).id, 3);
  EXPECT_EQ(s.sample(logits.data(), 5, p, {}, {0}, 0, 0, scratch).id, 3);  // output tokens count too
}

TEST(sampler, frequency_and_presence_penalties_use_output_counts_only) {
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, -1.0f};
  sampling_params p;
  p.frequency_penalty = 0.25f;
  p.presence_penalty = 0.5f;
  std::vector<float> adj = logits, work(4);
  // Output: id 0 three times, id 3 once; id 2 only in the prompt, so it is untouched.
  apply_penalties(adj.data(), 4, p, {2, 2, 0}, {0, 3, 0, 0}, work.data());
  // 2 - 0.25*3 - 0.5 = 0.75; -1 - 0.25 - 0.5 = -1.75.
  EXPECT_EQ(adj, (std::vector<float>{0.75f, 1.0f, 0.5f, -1.75f}));

  p = sampling_params{};
  p.presence_penalty = -1.0f;  // negative values encourage repetition
  adj = logits;
  apply_penalties(adj.data(), 4, p, {}, {3, 3}, work.data());
  EXPECT_EQ(adj, (std::vector<float>{2.0f, 1.0f, 0.5f, 0.0f}));

  // All three together, repetition first: (2 / 2) - 0.5*2 - 1 = -1.
  p = sampling_params{};
  p.repetition_penalty = 2;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 1;
  adj = logits;
  apply_penalties(adj.data(), 4, p, {1}, {0, 0}, work.data());
  EXPECT_EQ(adj, (std::vector<float>{-1.0f, 0.5f, 0.5f, -1.0f}));
}

TEST(sampler, temperature_sharpens_the_distribution) {
  const uint64_t seed = fresh_seed();
  sampling_params p;
  p.temperature = 0.5f;  // p^(1/T) = p^2: [.16, .09, .04, .01] / .30
  const auto counts = histogram(logits_of({0.4, 0.3, 0.2, 0.1}), p, 20000, seed);
  expect_distribution(counts, {0.16, 0.09, 0.04, 0.01}, seed);
  p.temperature = 1;
  expect_distribution(histogram(logits_of({0.4, 0.3, 0.2, 0.1}), p, 20000, seed), {0.4, 0.3, 0.2, 0.1}, seed);
}

TEST(sampler, top_k_keeps_the_k_most_likely) {
  const uint64_t seed = fresh_seed();
  // Shuffled ids so "the first k" and "the best k" differ.
  const auto logits = logits_of({0.05, 0.3, 0.1, 0.25, 0.2, 0.1});
  sampling_params p;
  p.top_k = 3;
  expect_distribution(histogram(logits, p, 20000, seed), {0, 0.3, 0, 0.25, 0.2, 0}, seed);
  p.top_k = 1;
  expect_distribution(histogram(logits, p, 2000, seed), {0, 1, 0, 0, 0, 0}, seed);
  p.top_k = 6;  // the whole vocabulary, as is anything larger
  expect_distribution(histogram(logits, p, 20000, seed), {0.05, 0.3, 0.1, 0.25, 0.2, 0.1}, seed);
  p.top_k = 100;
  expect_distribution(histogram(logits, p, 20000, seed), {0.05, 0.3, 0.1, 0.25, 0.2, 0.1}, seed);
}

TEST(sampler, top_p_keeps_the_smallest_prefix_reaching_the_mass) {
  const uint64_t seed = fresh_seed();
  const auto logits = logits_of({0.1, 0.3, 0.2, 0.4});
  sampling_params p;
  p.top_p = 0.65f;  // 0.4 < 0.65 <= 0.4 + 0.3
  expect_distribution(histogram(logits, p, 20000, seed), {0, 0.3, 0, 0.4}, seed);
  p.top_p = 0.75f;  // 0.7 < 0.75 <= 0.9
  expect_distribution(histogram(logits, p, 20000, seed), {0, 0.3, 0.2, 0.4}, seed);
  p.top_p = 0.01f;  // always at least one token
  expect_distribution(histogram(logits, p, 2000, seed), {0, 0, 0, 1}, seed);
  // top-k first, then top-p over the renormalized survivors: [.4 .3 .2] / .9 reaches 0.75 with two.
  p.top_k = 3;
  p.top_p = 0.75f;
  expect_distribution(histogram(logits, p, 20000, seed), {0, 0.3, 0, 0.4}, seed);
}

TEST(sampler, min_p_drops_tokens_below_a_fraction_of_the_best) {
  const uint64_t seed = fresh_seed();
  const auto logits = logits_of({0.1, 0.3, 0.2, 0.4});
  sampling_params p;
  p.min_p = 0.6f;  // threshold 0.24
  expect_distribution(histogram(logits, p, 20000, seed), {0, 0.3, 0, 0.4}, seed);
  p.min_p = 0.45f;  // threshold 0.18
  expect_distribution(histogram(logits, p, 20000, seed), {0, 0.3, 0.2, 0.4}, seed);
  // After temperature 0.5 the probabilities are [.01 .09 .04 .16] / .3: threshold 0.3 * 0.16 = 0.048
  // keeps only 0.09 and 0.16.
  p.temperature = 0.5f;
  p.min_p = 0.3f;
  expect_distribution(histogram(logits, p, 20000, seed), {0, 0.09, 0, 0.16}, seed);
}

// A large vocab whose kept set spans several of top-p's sorting chunks (64, 128, ...): compare with a
// brute-force full sort, token by token.
TEST(sampler, top_p_on_a_large_vocab_matches_a_full_sort) {
  const uint64_t seed = fresh_seed();
  std::mt19937_64 gen(seed);
  constexpr int32_t kVocab = 400;
  std::vector<float> logits(kVocab);
  for (auto& x : logits) x = std::uniform_real_distribution<float>(0.0f, 1.5f)(gen);
  sampling_params p;
  p.top_p = 0.6f;
  p.top_k = 350;
  p.temperature = 0.8f;
  // The reference does the sampler's float arithmetic with a plain full sort.
  std::vector<float> adj(kVocab), w(kVocab);
  for (int32_t i = 0; i < kVocab; ++i) adj[i] = logits[i] / p.temperature;
  const float mx = *std::max_element(adj.begin(), adj.end());
  for (int32_t i = 0; i < kVocab; ++i) w[i] = sampling_weight(adj[i], mx);
  std::vector<int32_t> order(kVocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return adj[a] > adj[b]; });
  double mass = 0;
  for (int32_t j = 0; j < p.top_k; ++j) mass += w[order[j]];
  std::vector<double> expected(kVocab, 0.0);
  double cum = 0;
  int32_t num_kept = 0;
  for (int32_t j = 0; j < p.top_k && cum < p.top_p * mass; ++j, ++num_kept) {
    cum += w[order[j]];
    expected[order[j]] = w[order[j]];
  }
  ASSERT_GT(num_kept, 130);  // past the first two chunks
  ASSERT_LT(num_kept, 300);
  const auto counts = histogram(logits, p, 60000, seed);
  expect_distribution(counts, expected, seed);
}

TEST(sampler, ties_at_the_cutoff_keep_the_lower_ids) {
  const uint64_t seed = fresh_seed();
  sampling_params p;
  p.top_k = 2;
  expect_distribution(histogram({1.0f, 2.0f, 2.0f, 2.0f, 0.0f}, p, 20000, seed), {0, 1, 1, 0, 0}, seed);
  p = sampling_params{};
  p.top_p = 0.5f;  // four equal tokens: exactly two reach half the mass
  expect_distribution(histogram({0.0f, 0.0f, 0.0f, 0.0f}, p, 20000, seed), {1, 1, 0, 0}, seed);

  // A large vocab on a coarse grid: the top-k cutoff falls inside a group of a few hundred ties.
  std::mt19937_64 gen(seed);
  constexpr int32_t kVocab = 1500;
  std::vector<float> logits(kVocab);
  for (auto& x : logits) x = std::uniform_int_distribution<int>(0, 10)(gen) * 0.1f;
  // Cut halfway through the third-best group of ties (each group holds ~136 tokens).
  const float third = 0.8f;
  const auto above = std::count_if(logits.begin(), logits.end(), [&](float x) { return x > third; });
  const auto group = std::count(logits.begin(), logits.end(), third);
  const auto kTopK = static_cast<int32_t>(above + group / 2);
  ASSERT_GT(group, 10);
  std::vector<int32_t> order(kVocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  ASSERT_EQ(logits[order[kTopK - 1]], logits[order[kTopK]]) << "the cutoff must split a tie group";
  std::vector<double> expected(kVocab, 0.0);
  for (int32_t j = 0; j < kTopK; ++j) expected[order[j]] = std::exp(static_cast<double>(logits[order[j]]));
  p = sampling_params{};
  p.top_k = kTopK;
  expect_distribution(histogram(logits, p, 25000, seed), expected, seed);
}

TEST(sampler, same_seed_and_step_give_the_same_token_in_any_call_order) {
  const uint64_t seed = fresh_seed();
  std::mt19937_64 gen(seed);
  std::vector<float> logits(5000);
  for (auto& x : logits) x = std::uniform_real_distribution<float>(0.0f, 1.0f)(gen);
  sampling_params p;
  p.top_k = 2000;
  p.top_p = 0.9f;
  sampler s;
  std::vector<float> scratch;
  std::vector<int32_t> forward, backward(64), other_seed;
  for (uint64_t step = 0; step < 64; ++step) {
    forward.push_back(s.sample(logits.data(), 5000, p, {}, {}, seed, step, scratch).id);
  }
  std::vector<float> small_scratch(7, 123.0f);  // dirty and too small: must not matter
  for (uint64_t step = 64; step-- > 0;) {
    backward[step] = s.sample(logits.data(), 5000, p, {}, {}, seed, step, small_scratch).id;
  }
  for (uint64_t step = 0; step < 64; ++step) {
    other_seed.push_back(s.sample(logits.data(), 5000, p, {}, {}, seed + 1, step, scratch).id);
  }
  EXPECT_EQ(forward, backward);
  EXPECT_NE(forward, other_seed);
  // Steps draw fresh numbers: 64 draws from ~4000 near-uniform tokens are almost all distinct.
  std::sort(forward.begin(), forward.end());
  EXPECT_GT(std::unique(forward.begin(), forward.end()) - forward.begin(), 55) << "seed " << seed;
}

TEST(sampler, scratch_is_not_reallocated_after_warm_up) {
  std::vector<float> logits(1000, 0.0f);
  logits[10] = 5;
  sampling_params p;
  p.top_k = 10;
  p.top_p = 0.5f;
  p.repetition_penalty = 1.2f;
  p.frequency_penalty = 0.1f;
  sampler s;
  std::vector<float> scratch;
  s.sample(logits.data(), 1000, p, {1, 2}, {3}, 1, 0, scratch);
  const float* data = scratch.data();
  for (uint64_t step = 1; step < 20; ++step)
    s.sample(logits.data(), 1000, p, {1, 2}, {3, 4}, 1, step, scratch);
  EXPECT_EQ(scratch.data(), data);
}

TEST(sampler, rejects_bad_inputs) {
  sampler s;
  std::vector<float> scratch;
  sampling_params p;
  std::vector<float> logits = {0.0f, 1.0f, std::nanf("")};
  EXPECT_THROW(s.sample(logits.data(), 3, p, {}, {}, 0, 0, scratch), troupe::error);
  logits[2] = 0;
  p.repetition_penalty = 1.5f;
  EXPECT_THROW(s.sample(logits.data(), 3, p, {3}, {}, 0, 0, scratch), troupe::error);
  EXPECT_THROW(s.sample(logits.data(), 3, p, {}, {-1}, 0, 0, scratch), troupe::error);
  const float ninf = -std::numeric_limits<float>::infinity();
  logits = {ninf, ninf, ninf};
  EXPECT_THROW(s.sample(logits.data(), 3, p, {}, {}, 0, 0, scratch), troupe::error);
  // Some -inf (masked) logits are fine and are never drawn.
  logits = {ninf, 0.0f, ninf};
  EXPECT_EQ(s.sample(logits.data(), 3, sampling_params{}, {}, {}, 5, 9, scratch).id, 1);
}

}  // namespace
}  // namespace troupe
