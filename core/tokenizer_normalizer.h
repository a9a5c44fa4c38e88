// tokenizer.json's "normalizer": NFC, NFD, Prepend, Replace, Strip and Sequence (flattened into steps).
// Hugging Face applies it to each piece of text between added tokens, not to the whole input.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tokenizer_regex.h"

namespace troupe::tokenizer_detail {

class normalizer {
 public:
  // null means no normalizer. Throws troupe::error naming an unsupported type.
  explicit normalizer(const nlohmann::json& j);
  std::string apply(std::string s) const;
  bool empty() const { return steps_.empty(); }

 private:
  enum class kind { nfc, nfd, prepend, replace, strip };
  struct step {
    kind k;
    std::string text;                  // prepend: the prefix; replace: the literal pattern
    std::string content;               // replace: the replacement
    std::shared_ptr<const regex> re;   // replace with a Regex pattern
    bool left = false, right = false;  // strip
  };
  void add(const nlohmann::json& j);
  std::vector<step> steps_;
};

// Reads a {"String": s} or {"Regex": r} pattern object: returns the regex text (a literal is quoted).
std::string pattern_to_regex(const nlohmann::json& pattern, const std::string& what);
// Replaces every occurrence of a literal.
std::string replace_all(std::string_view s, std::string_view from, std::string_view to);

}  // namespace troupe::tokenizer_detail
