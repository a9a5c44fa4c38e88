// Unit tests of troupe::tokenizer on two hand-made tokenizer.json files (tests/data/tokenizer/tiny_*):
// a byte-level BPE (Qwen/Llama-3 style) and a SentencePiece-style BPE with byte fallback (Llama-2
// style). Expected ids follow by hand from the merges listed in each file.
#include <gtest/gtest.h>

#include <thread>

#include "core/error.h"
#include "core/tokenizer.h"

namespace {

using ids = std::vector<int32_t>;

std::string data(const std::string& name) {
  return std::string(TROUPE_SOURCE_DIR) + "/tests/data/tokenizer/" + name;
}

const troupe::tokenizer& byte_level() {
  static const troupe::tokenizer t = troupe::tokenizer::load(data("tiny_byte_level/tokenizer.json"));
  return t;
}

const troupe::tokenizer& sentencepiece() {
  static const troupe::tokenizer t = troupe::tokenizer::load(data("tiny_sentencepiece/tokenizer.json"));
  return t;
}

// The message of the troupe::error that fn throws ("" when it throws none).
template <typename F>
std::string error_of(F fn) {
  try {
    fn();
  } catch (const troupe::error& e) {
    return e.what();
  }
  return "";
}

TEST(tokenizer_byte_level, merges_apply_by_rank) {
  // hello: h e l l o -> he l l o -> he ll o -> hell o -> hello; " world": Ġw, or, Ġwor, then l d.
  EXPECT_EQ(byte_level().encode("hello world", false), (ids{259, 262, 108, 100}));
  // Equal ranks: the leftmost pair merges first.
  EXPECT_EQ(byte_level().encode("lll", false), (ids{257, 108}));
  EXPECT_EQ(byte_level().encode("", false), ids{});
  EXPECT_EQ(byte_level().encode("", true), ids{267});
}

TEST(tokenizer_byte_level, bytes_map_to_their_ids) {
  // Ids 0..255 are the byte-level characters of bytes 0..255.
  EXPECT_EQ(byte_level().encode("\xF0\x9F\x98\x80", false), (ids{0xF0, 0x9F, 0x98, 0x80}));
  EXPECT_EQ(byte_level().decode({0xF0, 0x9F, 0x98, 0x80}, true), "\xF0\x9F\x98\x80");
  EXPECT_EQ(byte_level().encode("\t\n", false), (ids{9, 10}));
  // An incomplete character decodes to U+FFFD, once per maximal invalid subpart.
  EXPECT_EQ(byte_level().decode({0xF0, 0x9F, 104}, true), "\xEF\xBF\xBDh");
}

TEST(tokenizer_byte_level, invalid_utf8_input_is_replaced) {
  EXPECT_EQ(byte_level().encode("a\xFF", false), (ids{97, 0xEF, 0xBF, 0xBD}));
}

TEST(tokenizer_byte_level, nfc_normalizer_composes) {
  // e + U+0301 becomes U+00E9 (C3 A9) before the model sees it.
  EXPECT_EQ(byte_level().encode("e\xCC\x81", false), (ids{0xC3, 0xA9}));
}

TEST(tokenizer_byte_level, added_tokens_split_out) {
  EXPECT_EQ(byte_level().encode("a<|end|>b", false), (ids{97, 263, 98}));
  EXPECT_EQ(byte_level().encode("a<|end|>b", true), (ids{267, 97, 263, 98}));
  EXPECT_EQ(byte_level().encode("<think>hello", false), (ids{264, 259}));
  // A prefix of an added token is plain text.
  EXPECT_EQ(byte_level().encode("<|en", false), (ids{60, 124, 101, 110}));
}

TEST(tokenizer_byte_level, lstrip_rstrip_take_the_spaces) {
  EXPECT_EQ(byte_level().encode("x <|rs|>  y", false), (ids{120, 265, 121}));
}

TEST(tokenizer_byte_level, single_word_needs_word_boundaries) {
  EXPECT_EQ(byte_level().encode("[W] a", false), (ids{266, 32, 97}));
  // Glued to a letter it is not a word: the text goes through the model ("[W" then "]").
  EXPECT_EQ(byte_level().encode("x[W]", false), (ids{120, 91, 87, 93}));
}

TEST(tokenizer_byte_level, decode_skips_only_special_tokens) {
  ids in{267, 264, 259, 263};
  EXPECT_EQ(byte_level().decode(in, false), "<|bos|><think>hello<|end|>");
  EXPECT_EQ(byte_level().decode(in, true), "<think>hello");
  EXPECT_EQ(byte_level().decode({259, 99999, -1}, true), "hello");  // unknown ids are dropped
}

TEST(tokenizer_byte_level, vocabulary_queries) {
  const auto& t = byte_level();
  EXPECT_EQ(t.vocab_size(), 268);
  EXPECT_EQ(t.token_to_id("hello"), 259);
  EXPECT_EQ(t.token_to_id("<|end|>"), 263);
  EXPECT_EQ(t.token_to_id("nope"), std::nullopt);
  EXPECT_EQ(t.id_to_token(262), "\xC4\xA0wor");
  EXPECT_EQ(t.id_to_token(265), "<|rs|>");
  EXPECT_EQ(t.id_to_token(5000), "");
  EXPECT_TRUE(t.is_special(263));
  EXPECT_FALSE(t.is_special(264));
  EXPECT_FALSE(t.is_special(259));
  EXPECT_EQ(t.bos_id(), 267);  // from the template, without tokenizer_config.json
  EXPECT_EQ(t.bos_token(), "<|bos|>");
  EXPECT_EQ(t.eos_id(), std::nullopt);
}

TEST(tokenizer_sentencepiece, prepend_and_replace_then_merge) {
  EXPECT_EQ(sentencepiece().encode("hello", false), (ids{271}));
  EXPECT_EQ(sentencepiece().encode("hello", true), (ids{1, 271}));
  // No pre-tokenizer: "▁hello▁world" is one word; "o r" is not a merge.
  EXPECT_EQ(sentencepiece().encode("hello world", false), (ids{271, 272, 263, 265, 262, 266}));
}

TEST(tokenizer_sentencepiece, byte_fallback_and_unknown) {
  // é is not in the vocabulary: its bytes C3 A9 become <0xC3> <0xA9> (ids 3 + byte).
  EXPECT_EQ(sentencepiece().encode("h\xC3\xA9", false), (ids{267, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(sentencepiece().decode({267, 3 + 0xC3, 3 + 0xA9}, true), "h\xC3\xA9");
  // A lone byte token decodes to one U+FFFD per byte.
  EXPECT_EQ(sentencepiece().decode({3 + 0xC3, 3 + 0xC3}, true), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(tokenizer_sentencepiece, special_token_text_splits_before_normalizing) {
  // "<s>" is cut out first; each remaining piece gets its own "▁" prefix (as tokenizers does).
  EXPECT_EQ(sentencepiece().encode("<s>hello</s>", false), (ids{1, 271, 2}));
}

TEST(tokenizer_sentencepiece, decode_strips_one_leading_space) {
  ids in{1, 271, 272, 263, 265, 262, 266};
  EXPECT_EQ(sentencepiece().decode(in, true), "hello world");
  EXPECT_EQ(sentencepiece().decode(in, false), "<s> hello world");
  EXPECT_EQ(sentencepiece().decode({259, 271}, true), " hello");  // "▁▁hello": only one space goes
}

TEST(tokenizer_sentencepiece, load_dir_reads_tokenizer_config) {
  troupe::tokenizer t = troupe::tokenizer::load_dir(data("tiny_sentencepiece"));
  EXPECT_EQ(t.bos_id(), 1);  // {"content": "<s>"} object form
  EXPECT_EQ(t.eos_id(), 2);  // plain string form
  EXPECT_EQ(t.bos_token(), "<s>");
  EXPECT_EQ(t.eos_token(), "</s>");
  // add_bos_token false, add_eos_token true replace the template's BOS.
  EXPECT_EQ(t.encode("hello", true), (ids{271, 2}));
  EXPECT_EQ(t.encode("hello", false), (ids{271}));
}

TEST(tokenizer_errors, bad_json_names_the_file) {
  std::string msg = error_of([] { troupe::tokenizer::from_json("{\"model\": [1, 2", "x.json"); });
  EXPECT_NE(msg.find("x.json: not valid JSON"), std::string::npos) << msg;
  msg = error_of([] { troupe::tokenizer::load("/nonexistent/tokenizer.json"); });
  EXPECT_NE(msg.find("cannot open /nonexistent/tokenizer.json"), std::string::npos) << msg;
  msg = error_of([] { troupe::tokenizer::from_json("{}", "y.json"); });
  EXPECT_NE(msg.find("y.json: no \"model\""), std::string::npos) << msg;
}

std::string with(const std::string& field, const std::string& value) {
  return R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}, ")" + field +
         "\": " + value + "}";
}

TEST(tokenizer_errors, unsupported_components_are_named) {
  auto msg = [](const std::string& json) {
    return error_of([&] { troupe::tokenizer::from_json(json, "t.json"); });
  };
  EXPECT_EQ(msg(R"({"model": {"type": "Unigram", "vocab": []}})"),
            "t.json: unsupported model type 'Unigram' (only BPE is supported)");
  EXPECT_NE(msg(with("normalizer", R"({"type": "NFKC"})")).find("unsupported normalizer type 'NFKC'"),
            std::string::npos);
  EXPECT_NE(msg(with("pre_tokenizer", R"({"type": "BertPreTokenizer"})"))
                .find("pre_tokenizer type 'BertPreTokenizer'"),
            std::string::npos);
  EXPECT_NE(msg(with("decoder", R"({"type": "WordPiece"})")).find("unsupported decoder type 'WordPiece'"),
            std::string::npos);
  EXPECT_NE(msg(with("post_processor", R"({"type": "Foo"})")).find("unsupported post_processor type 'Foo'"),
            std::string::npos);
  EXPECT_NE(
      msg(with("pre_tokenizer", R"({"type": "Split", "pattern": {"Regex": "(["}, "behavior": "Isolated"})"))
          .find("pre_tokenizer Split: bad regex"),
      std::string::npos);
  EXPECT_NE(
      msg(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a c"]}})").find("not in the vocab"),
      std::string::npos);
  // A component that is present but malformed is an error too, not a crash.
  EXPECT_NE(msg(with("normalizer", R"({"type": "Replace"})")).find("t.json: malformed component"),
            std::string::npos);
}

TEST(tokenizer_small_json, from_json_works_without_optional_parts) {
  troupe::tokenizer t = troupe::tokenizer::from_json(with("added_tokens", "[]"));
  EXPECT_EQ(t.encode("ab", true), (ids{2}));
  EXPECT_EQ(t.encode("ba", false), (ids{1, 0}));
  EXPECT_EQ(t.decode({2, 0}, false), "ab a");  // no decoder: tokens joined with spaces
  EXPECT_EQ(t.vocab_size(), 3);
}

TEST(tokenizer_threads, concurrent_encodes_agree) {
  const auto& t = byte_level();
  std::vector<std::thread> threads;
  std::vector<int> bad(8, 0);
  for (int k = 0; k < 8; ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 200; ++i) {
        std::string s = "hello world " + std::to_string(k * 1000 + i);
        ids got = t.encode(s, false);
        ids want{259, 262, 108, 100, 32};
        for (char c : std::to_string(k * 1000 + i)) want.push_back(c);
        bad[k] += got != want;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int k = 0; k < 8; ++k) EXPECT_EQ(bad[k], 0) << "thread " << k;
}

}  // namespace

namespace {

TEST(tokenizer_small_json, metaspace_pre_tokenizer_and_decoder) {
  // Mistral-style: Metaspace replaces spaces, prepends "▁" and splits before each "▁".
  const std::string json = R"({
    "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": true},
    "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": true},
    "model": {"type": "BPE", "vocab": {"\u2581a": 0, "\u2581b": 1, "\u2581": 2, "a": 3, "b": 4},
              "merges": [["\u2581", "a"], ["\u2581", "b"]]}})";
  troupe::tokenizer t = troupe::tokenizer::from_json(json);
  EXPECT_EQ(t.encode("a b", false), (ids{0, 1}));
  EXPECT_EQ(t.encode("ab  a", false), (ids{0, 4, 2, 0}));
  EXPECT_EQ(t.decode({0, 1}, false), "a b");
  EXPECT_EQ(t.decode({0, 4, 2, 0}, false), "ab  a");
}

}  // namespace
