#include "core/stop_checker.h"

#include <algorithm>

#include "core/error.h"

namespace troupe {

namespace {

// Length of the longest suffix of `text` that is a proper prefix of `stop` (it could still complete).
size_t partial_match_len(const std::string& text, const std::string& stop) {
  for (size_t len = std::min(text.size(), stop.size() - 1); len > 0; --len) {
    if (text.compare(text.size() - len, len, stop, 0, len) == 0) return len;
  }
  return 0;
}

// Moves `cut` back to the start of a UTF-8 sequence that [0, cut) leaves incomplete; invalid bytes are
// not our business and pass through.
size_t utf8_safe_cut(const std::string& s, size_t cut) {
  size_t j = cut;
  int continuation = 0;
  while (j > 0 && continuation < 3 && (static_cast<unsigned char>(s[j - 1]) & 0xC0) == 0x80) {
    --j;
    ++continuation;
  }
  if (j == 0) return cut;
  const auto lead = static_cast<unsigned char>(s[j - 1]);
  size_t need;
  if ((lead & 0xE0) == 0xC0) {
    need = 2;
  } else if ((lead & 0xF0) == 0xE0) {
    need = 3;
  } else if ((lead & 0xF8) == 0xF0) {
    need = 4;
  } else {
    return cut;  // ASCII, or stray continuation bytes
  }
  return cut - (j - 1) < need ? j - 1 : cut;
}

}  // namespace

stop_checker::stop_checker(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const auto& s : stops_) TROUPE_CHECK(!s.empty()) << "empty stop string";
}

stop_update stop_checker::push(std::string_view new_text) {
  if (stopped_) return {"", true, matched_};
  held_.append(new_text);

  // Earlier text was emitted only once no suffix of it could begin a stop string, so every match
  // starts inside held_.
  // The winner is the match that completes first (then the longer one, then list order): that is the
  // match a byte-by-byte stream would see first, so the result does not depend on the chunking.
  size_t best_pos = std::string::npos, best_end = std::string::npos;
  const std::string* best = nullptr;
  for (const auto& s : stops_) {
    const size_t pos = held_.find(s);
    if (pos == std::string::npos) continue;
    const size_t end = pos + s.size();
    if (end < best_end || (end == best_end && pos < best_pos)) {
      best_pos = pos;
      best_end = end;
      best = &s;
    }
  }
  if (best != nullptr) {
    stopped_ = true;
    matched_ = *best;
    stop_update out{held_.substr(0, best_pos), true, matched_};
    held_.clear();
    return out;
  }

  size_t hold = 0;
  for (const auto& s : stops_) hold = std::max(hold, partial_match_len(held_, s));
  const size_t cut = utf8_safe_cut(held_, held_.size() - hold);
  stop_update out{held_.substr(0, cut), false, ""};
  held_.erase(0, cut);
  return out;
}

std::string stop_checker::flush() {
  if (stopped_) return "";
  std::string out;
  out.swap(held_);
  return out;
}

bool is_stop_token(int32_t id, const sampling_params& p, std::optional<int32_t> eos_id) {
  if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), id) != p.stop_token_ids.end()) {
    return true;
  }
  return eos_id.has_value() && id == *eos_id && !p.ignore_eos;
}

}  // namespace troupe
