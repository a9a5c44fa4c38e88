// Stop conditions on generated output: stop strings on the detokenized text stream (stop_checker) and
// stop token ids (is_stop_token).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/sampling.h"

namespace troupe {

struct stop_update {
  std::string emit;     // text that is now safe to send to the client
  bool stopped;         // a stop string matched; emit ends right before it
  std::string matched;  // the stop string that matched (empty unless stopped)
};

// Watches incrementally detokenized text for stop strings. Text is held back while its tail could still
// grow into a stop string, so a client never sees any part of one (vLLM's default
// include_stop_str_in_output=false); matches that straddle pushes are found. Also holds back a trailing
// incomplete UTF-8 sequence so emitted chunks always end on a character boundary. One per sequence.
class stop_checker {
 public:
  explicit stop_checker(std::vector<std::string> stops);

  // Appends newly detokenized text. When several stop strings match, the one that ends first wins
  // (ties: the longer, i.e. the one starting first), so how the text is split into pushes never changes
  // the outcome. Once stopped, later pushes emit nothing.
  stop_update push(std::string_view new_text);
  // At the end of generation (no stop string): everything still held back.
  std::string flush();

  bool stopped() const { return stopped_; }
  size_t num_bytes_held() const { return held_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // not yet emitted; any future match starts inside it
  bool stopped_ = false;
  std::string matched_;
};

// eos stops unless ignore_eos; stop_token_ids always stop.
bool is_stop_token(int32_t id, const sampling_params& p, std::optional<int32_t> eos_id);

}  // namespace troupe
