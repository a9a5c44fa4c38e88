// UTF-8 and Unicode helpers for the tokenizer: code point iteration, Rust-compatible lossy decoding
// (tokenizers decodes bytes with String::from_utf8_lossy, so ours must replace invalid input the same
// way), canonical normalization (NFC/NFD) from generated tables, and the character classes Hugging
// Face's added-token matching uses (Rust's char::is_whitespace / is_alphanumeric).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace troupe::unicode {

constexpr uint32_t k_replacement_char = 0xFFFD;

// Length of the UTF-8 sequence a lead byte starts (1 for a stray continuation or invalid byte).
size_t utf8_sequence_length(unsigned char lead);

// Decodes the code point at s[i] and advances i past it. On malformed input returns U+FFFD and
// advances by the maximal invalid subpart (at least one byte), as from_utf8_lossy does.
uint32_t next_code_point(std::string_view s, size_t& i);

void append_utf8(std::string& out, uint32_t cp);

bool is_valid_utf8(std::string_view s);

// Rust's String::from_utf8_lossy: every maximal invalid subpart becomes one U+FFFD.
std::string from_utf8_lossy(std::string_view bytes);

// Canonical decomposition / composition (Unicode Standard Annex #15). Input must be valid UTF-8.
std::string nfd(std::string_view s);
std::string nfc(std::string_view s);

// Rust's char::is_whitespace (the White_Space property).
bool is_whitespace(uint32_t cp);
// Letters and numbers (general categories L*, Nd, Nl, No): Rust's char::is_alphanumeric.
bool is_alphanumeric(uint32_t cp);

// Canonical combining class (0 for starters).
uint8_t combining_class(uint32_t cp);

}  // namespace troupe::unicode
