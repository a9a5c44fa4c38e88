// tokenizer.json's "decoder" (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence) and
// "post_processor" (TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace troupe::tokenizer_detail {

class decoder {
 public:
  // null means no decoder (tokens are then joined with spaces, as tokenizers does).
  explicit decoder(const nlohmann::json& j);
  std::string decode(std::vector<std::string> tokens) const;

 private:
  enum class kind { byte_level, replace, byte_fallback, fuse, strip, metaspace };
  struct step {
    explicit step(kind kk) : k(kk) {}
    kind k;
    std::string from,
        to;  // replace: literal pattern and content; strip: the character; metaspace: replacement
    size_t start = 0, stop = 0;  // strip
    bool prepend = true;         // metaspace: prepend_scheme != never
  };
  void add(const nlohmann::json& j);
  bool present_ = false;
  std::vector<step> steps_;
};

class post_processor {
 public:
  explicit post_processor(const nlohmann::json& j);
  // The ids with the single-sequence template's special tokens added.
  std::vector<int32_t> apply(const std::vector<int32_t>& ids) const;
  // The ids added before / after the sequence (for bos_id and tokenizer_config overrides).
  const std::vector<int32_t>& prefix() const { return prefix_; }
  const std::vector<int32_t>& suffix() const { return suffix_; }
  void set(std::vector<int32_t> prefix, std::vector<int32_t> suffix);

 private:
  void add(const nlohmann::json& j);
  std::vector<int32_t> prefix_, suffix_;
};

}  // namespace troupe::tokenizer_detail
