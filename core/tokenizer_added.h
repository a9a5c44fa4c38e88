// Added tokens (tokenizer.json's "added_tokens"): special and user tokens that are cut out of the text
// before the model runs, matched leftmost-longest as Hugging Face's Aho-Corasick matcher does and
// honoring lstrip / rstrip / single_word. Tokens with normalized=false are matched in the raw text,
// those with normalized=true in each normalized piece.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/tokenizer_normalizer.h"

namespace troupe::tokenizer_detail {

struct added_token {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// A slice of the input: either plain text (id < 0) or one matched added token.
struct text_piece {
  std::string text;
  int32_t id = -1;
  size_t offset = 0;  // byte offset of the piece in the string that was split
};

class added_vocabulary {
 public:
  // `tokens` is the "added_tokens" array; normalized tokens are matched by their normalized form.
  added_vocabulary(const nlohmann::json& tokens, const normalizer& norm);

  // Splits text around the tokens of one set (normalized=false or normalized=true).
  void split(std::string_view text, bool normalized_set, std::vector<text_piece>& out) const;

  const added_token* find(int32_t id) const;
  std::optional<int32_t> find(const std::string& content) const;
  int32_t max_id() const { return max_id_; }

 private:
  // A byte trie over token contents; node 0 is the root.
  struct trie {
    struct node {
      std::vector<std::pair<unsigned char, int32_t>> next;
      int32_t token = -1;  // index into tokens_
    };
    std::vector<node> nodes{node{}};
    void insert(std::string_view key, int32_t token);
    // The longest token starting at text[pos]: (token index, length), token -1 when none.
    std::pair<int32_t, size_t> longest(std::string_view text, size_t pos) const;
  };

  std::vector<added_token> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, int32_t> by_content_;
  trie raw_, normalized_;
  int32_t max_id_ = -1;
};

}  // namespace troupe::tokenizer_detail
