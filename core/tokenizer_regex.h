// A compiled PCRE2 pattern (UTF + UCP, so \p{L}, \s and case folding follow Unicode as Hugging Face's
// Oniguruma patterns do) with a thread-safe find-all. The compiled code is shared and immutable;
// match data lives per call, so one regex serves many threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace troupe::tokenizer_detail {

class regex {
 public:
  // Throws troupe::error naming `what` (the component) and the PCRE2 message on a bad pattern.
  regex(const std::string& pattern, const std::string& what);

  // Every non-overlapping, non-empty match as [begin, end) byte offsets, left to right. The subject
  // must be valid UTF-8 (it is not re-checked, which keeps repeated matching linear).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view subject) const;

  // Quotes a literal string for use inside a pattern.
  static std::string escape(std::string_view literal);

 private:
  struct code;
  std::shared_ptr<const code> code_;
};

}  // namespace troupe::tokenizer_detail
