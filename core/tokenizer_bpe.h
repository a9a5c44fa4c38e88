// The BPE model of a Hugging Face tokenizer.json: vocabulary, ranked merges, byte fallback, unknown
// token, ignore_merges. tokenize() turns one pre-tokenized word into ids; results are kept in a
// bounded, mutex-protected cache because real text repeats words constantly.
#pragma once

#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/tokenizer_json.h"

namespace troupe::tokenizer_detail {

class bpe_model {
 public:
  // `model` is tokenizer.json's "model" object without its vocab and merges, which come in `tables`
  // (see tokenizer_json.h). Throws troupe::error on anything but a valid BPE.
  bpe_model(const nlohmann::json& model, bpe_tables tables);
  bpe_model(const bpe_model&) = delete;
  bpe_model& operator=(const bpe_model&) = delete;

  // Appends the ids of one word to out. Thread-safe.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(const std::string& token) const;
  // nullptr when the id is not in the vocabulary.
  const std::string* id_to_token(int32_t id) const;
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

 private:
  struct merge {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;  // [max id + 1]; holes are empty and absent from vocab_
  std::vector<bool> id_present_;          // [max id + 1]
  std::unordered_map<uint64_t, merge> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  int32_t byte_ids_[256];  // id of "<0xXX>" or -1, for byte fallback

  static constexpr size_t k_cache_capacity = 16384;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace troupe::tokenizer_detail
