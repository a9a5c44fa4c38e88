// Text <-> token ids from a Hugging Face tokenizer.json: byte-level BPE (Qwen2/3, Llama-3, DeepSeek-V3)
// and SentencePiece-style BPE with byte fallback (Llama-2, Mistral, Gemma), with added/special tokens,
// normalizers, pre-tokenizers, post-processors and decoders as `tokenizers` applies them. Ids match
// `tokenizers` exactly (tests/core/test_tokenizer_reference.cpp checks it on real files).
//
// A tokenizer is cheap to copy (copies share the immutable tables and the word cache) and all its
// methods are const and thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {

class tokenizer {
 public:
  // Throws troupe::error naming the file and the component at fault.
  static tokenizer load(const std::string& tokenizer_json_path);
  // tokenizer.json plus, when present, tokenizer_config.json: bos_token / eos_token (strings or
  // {"content": ...} objects) name bos_id / eos_id, and add_bos_token / add_eos_token, when given,
  // decide which of them encode(..., true) adds (replacing the tokenizer.json post-processor's).
  static tokenizer load_dir(const std::string& model_dir);
  // The same from the JSON text itself (tests, embedded tokenizers); `name` appears in errors.
  static tokenizer from_json(std::string_view tokenizer_json, const std::string& name = "tokenizer.json");

  // Invalid UTF-8 in text is replaced by U+FFFD first. add_special_tokens runs the post-processor
  // (BOS and the like); special-token text such as "<|im_start|>" is always recognized.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  // Ids outside the vocabulary are skipped.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;

  int32_t vocab_size() const;  // max id + 1 over vocab and added tokens
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // "" for an id that is not in the vocabulary
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  std::optional<std::string> bos_token() const;
  std::optional<std::string> eos_token() const;
  bool is_special(int32_t id) const;

  struct impl;

 private:
  explicit tokenizer(std::shared_ptr<const impl> p) : impl_(std::move(p)) {}
  std::shared_ptr<const impl> impl_;
};

// Turns a stream of generated ids into text as they arrive, never emitting half a UTF-8 character
// and keeping the spaces a full decode would give (vLLM's prefix/read offsets: each step decodes a
// short window of recent ids and emits what the newest id added). One per sequence; not thread-safe.
class incremental_detokenizer {
 public:
  // The tokenizer must outlive the detokenizer.
  explicit incremental_detokenizer(const tokenizer& tok, bool skip_special_tokens = true);

  // The prompt gives context, so the first output token decodes as it would after it (a leading
  // SentencePiece space is kept, a byte token can complete a prompt's partial character).
  void set_prompt(const std::vector<int32_t>& prompt_ids);
  // The newly completed text (possibly empty while a character is incomplete).
  std::string push(int32_t id);
  // Whatever is still held back (an incomplete character becomes U+FFFD, as in a full decode).
  std::string flush();

 private:
  std::string decode_range(size_t begin, size_t end) const;

  const tokenizer* tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;  // start of the window decoded for context
  size_t read_offset_ = 0;    // ids before this have been emitted
};

}  // namespace troupe
