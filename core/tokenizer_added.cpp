#include "core/tokenizer_added.h"

#include "core/error.h"
#include "core/unicode.h"

namespace troupe::tokenizer_detail {

namespace {

// The last / first character of s, or 0 for an empty string.
uint32_t last_char(std::string_view s) {
  if (s.empty()) return 0;
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return unicode::next_code_point(s, i);
}

uint32_t first_char(std::string_view s) {
  size_t i = 0;
  return s.empty() ? 0 : unicode::next_code_point(s, i);
}

// Byte offset where the run of whitespace ending s begins (s.size() when s does not end in one).
size_t trailing_space_start(std::string_view s) {
  size_t start = s.size();
  for (size_t i = 0; i < s.size();) {
    size_t at = i;
    if (unicode::is_whitespace(unicode::next_code_point(s, i))) {
      if (start == s.size()) start = at;
    } else {
      start = s.size();
    }
  }
  return start;
}

// Length in bytes of the run of whitespace starting s.
size_t leading_space_length(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t at = i;
    if (!unicode::is_whitespace(unicode::next_code_point(s, i))) return at;
  }
  return s.size();
}

}  // namespace

void added_vocabulary::trie::insert(std::string_view key, int32_t token) {
  int32_t n = 0;
  for (unsigned char c : key) {
    int32_t child = -1;
    for (auto& [b, idx] : nodes[n].next)
      if (b == c) child = idx;
    if (child < 0) {
      child = static_cast<int32_t>(nodes.size());
      nodes[n].next.emplace_back(c, child);
      nodes.emplace_back();
    }
    n = child;
  }
  // The first token with a given content wins, as a duplicate pattern does in tokenizers.
  if (nodes[n].token < 0) nodes[n].token = token;
}

std::pair<int32_t, size_t> added_vocabulary::trie::longest(std::string_view text, size_t pos) const {
  std::pair<int32_t, size_t> best{-1, 0};
  int32_t n = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    int32_t child = -1;
    auto c = static_cast<unsigned char>(text[i]);
    for (const auto& [b, idx] : nodes[n].next)
      if (b == c) child = idx;
    if (child < 0) break;
    n = child;
    if (nodes[n].token >= 0) best = {nodes[n].token, i + 1 - pos};
  }
  return best;
}

added_vocabulary::added_vocabulary(const nlohmann::json& tokens, const normalizer& norm) {
  if (tokens.is_null()) return;
  if (!tokens.is_array()) throw error("tokenizer.json: added_tokens is not an array");
  for (const auto& t : tokens) {
    added_token a;
    a.content = t.at("content").get<std::string>();
    a.id = t.at("id").get<int32_t>();
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.single_word = t.value("single_word", false);
    a.normalized = t.value("normalized", !a.special);
    if (a.content.empty()) throw error("tokenizer.json: added token " + std::to_string(a.id) + " is empty");
    auto index = static_cast<int32_t>(tokens_.size());
    by_id_[a.id] = tokens_.size();
    by_content_.emplace(a.content, a.id);
    max_id_ = std::max(max_id_, a.id);
    if (a.normalized) {
      std::string key = norm.apply(a.content);
      if (!key.empty()) normalized_.insert(key, index);
    } else {
      raw_.insert(a.content, index);
    }
    tokens_.push_back(std::move(a));
  }
}

const added_token* added_vocabulary::find(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> added_vocabulary::find(const std::string& content) const {
  auto it = by_content_.find(content);
  if (it == by_content_.end()) return std::nullopt;
  return it->second;
}

void added_vocabulary::split(std::string_view text, bool normalized_set, std::vector<text_piece>& out) const {
  const trie& t = normalized_set ? normalized_ : raw_;
  size_t done = 0;  // end of the last piece emitted
  size_t pos = 0;
  while (pos < text.size()) {
    auto [index, len] = t.nodes[0].next.empty() ? std::pair<int32_t, size_t>{-1, 0} : t.longest(text, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    const added_token& tok = tokens_[index];
    size_t start = pos, stop = pos + len;
    pos = stop;  // the matcher resumes after this match even when single_word rejects it
    if (tok.single_word) {
      bool space_before = start == 0 || !unicode::is_alphanumeric(last_char(text.substr(0, start)));
      bool space_after = stop == text.size() || !unicode::is_alphanumeric(first_char(text.substr(stop)));
      if (!space_before || !space_after) continue;
    }
    if (tok.lstrip) start = std::max(trailing_space_start(text.substr(0, start)), done);
    if (tok.rstrip) stop += leading_space_length(text.substr(stop));
    if (done < start) out.push_back(text_piece{std::string(text.substr(done, start - done)), -1, done});
    out.push_back(text_piece{std::string(text.substr(start, stop - start)), tok.id, start});
    done = stop;
    pos = std::max(pos, stop);
  }
  if (done < text.size()) out.push_back(text_piece{std::string(text.substr(done)), -1, done});
}

}  // namespace troupe::tokenizer_detail
