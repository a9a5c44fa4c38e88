// tokenizer.json's "pre_tokenizer": Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit
// and Sequence (flattened into steps). Each step refines the list of words the previous one made.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tokenizer_regex.h"

namespace troupe::tokenizer_detail {

// The GPT-2 byte-to-character map ByteLevel uses: printable bytes map to themselves, the others to
// U+0100 onwards, so every byte sequence becomes a printable string.
const std::string& byte_to_unicode(unsigned char b);  // as UTF-8
// The inverse: the byte of a mapped character, or -1 when cp is not in the map.
int unicode_to_byte(uint32_t cp);

class pre_tokenizer {
 public:
  // null means no pre-tokenizer. Throws troupe::error naming an unsupported type.
  explicit pre_tokenizer(const nlohmann::json& j);

  // Appends the words of one normalized piece to out. `first_piece` says the piece starts the input
  // (Metaspace's prepend_scheme "first").
  void apply(const std::string& piece, bool first_piece, std::vector<std::string>& out) const;

 private:
  enum class kind { split, byte_level, metaspace };
  enum class behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };
  enum class prepend { always, first, never };
  struct step {
    explicit step(kind kk) : k(kk) {}
    kind k;
    std::shared_ptr<const regex> re;  // split; byte_level with use_regex
    behavior how = behavior::isolated;
    bool invert = false;
    bool add_prefix_space = false;     // byte_level
    std::string replacement;           // metaspace, as UTF-8
    prepend scheme = prepend::always;  // metaspace
    bool split = true;                 // metaspace
  };
  void add(const nlohmann::json& j);
  static void split_by(const std::string& w, const regex& re, behavior how, bool invert,
                       std::vector<std::string>& out);
  std::vector<step> steps_;
};

}  // namespace troupe::tokenizer_detail
