// incremental_detokenizer (declared in tokenizer.h): vLLM's prefix/read-offset scheme. Decoding a
// window rather than single ids is what keeps SentencePiece spaces right (a lone "▁world" decodes to
// "world" when it starts the text, to " world" after another token) and byte tokens whole.
#include "core/tokenizer.h"
#include "core/unicode.h"

namespace troupe {

namespace {

constexpr size_t k_context_tokens = 5;  // prompt ids decoded as context for the first output id
const std::string k_replacement = "\xEF\xBF\xBD";

bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, k_replacement) == 0;
}

// The part of `text` after `prefix`, cut on a character boundary.
std::string suffix_after(const std::string& text, const std::string& prefix) {
  size_t at = prefix.size();
  while (at < text.size() && (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) ++at;
  return at < text.size() ? text.substr(at) : std::string();
}

}  // namespace

incremental_detokenizer::incremental_detokenizer(const tokenizer& tok, bool skip_special_tokens)
    : tok_(&tok), skip_special_(skip_special_tokens) {}

std::string incremental_detokenizer::decode_range(size_t begin, size_t end) const {
  return tok_->decode(std::vector<int32_t>(ids_.begin() + begin, ids_.begin() + end), skip_special_);
}

void incremental_detokenizer::set_prompt(const std::vector<int32_t>& prompt_ids) {
  ids_ = prompt_ids;
  read_offset_ = ids_.size();
  prefix_offset_ = ids_.size() > k_context_tokens ? ids_.size() - k_context_tokens : 0;
  // A window that starts inside a multi-byte character decodes to a leading U+FFFD that a longer
  // window would not reproduce; widen it until it starts on a character (bounded: 4 bytes at most).
  for (int tries = 0; tries < 8 && prefix_offset_ > 0; ++tries) {
    if (decode_range(prefix_offset_, read_offset_).compare(0, 3, k_replacement) != 0) break;
    --prefix_offset_;
  }
  // A prompt that ends inside a character: its trailing bytes count as unread, so the output that
  // completes the character emits it whole.
  for (int tries = 0; tries < 4 && read_offset_ > prefix_offset_; ++tries) {
    if (!ends_with_replacement(decode_range(prefix_offset_, read_offset_))) break;
    --read_offset_;
  }
}

std::string incremental_detokenizer::push(int32_t id) {
  ids_.push_back(id);
  std::string prefix_text = decode_range(prefix_offset_, read_offset_);
  std::string new_text = decode_range(prefix_offset_, ids_.size());
  if (new_text.size() <= prefix_text.size() || ends_with_replacement(new_text)) return std::string();
  std::string out = suffix_after(new_text, prefix_text);
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  // Ids before the window are never decoded again: drop them now and then so memory stays bounded.
  if (prefix_offset_ > 4096) {
    ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_offset_));
    read_offset_ -= prefix_offset_;
    prefix_offset_ = 0;
  }
  return out;
}

std::string incremental_detokenizer::flush() {
  if (read_offset_ >= ids_.size()) return std::string();
  std::string prefix_text = decode_range(prefix_offset_, read_offset_);
  std::string new_text = decode_range(prefix_offset_, ids_.size());
  prefix_offset_ = read_offset_ = ids_.size();
  return new_text.size() > prefix_text.size() ? suffix_after(new_text, prefix_text) : std::string();
}

}  // namespace troupe
