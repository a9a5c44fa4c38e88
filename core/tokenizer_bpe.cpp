#include "core/tokenizer_bpe.h"

#include <cstdio>
#include <queue>

#include "core/error.h"
#include "core/unicode.h"

namespace troupe::tokenizer_detail {

namespace {

std::string optional_string(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool optional_bool(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() && it->get<bool>();
}

}  // namespace

bpe_model::bpe_model(const nlohmann::json& model, bpe_tables tables) {
  std::string type = optional_string(model, "type");
  if (type.empty() && tables.has_merges) type = "BPE";  // old files leave the type out
  if (type != "BPE") {
    throw error("tokenizer.json: unsupported model type '" + type + "' (only BPE is supported)");
  }
  if (!tables.has_vocab) throw error("tokenizer.json: BPE model has no vocab object");
  if (!tables.has_merges) throw error("tokenizer.json: BPE model has no merges array");
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0) {
    throw error("tokenizer.json: BPE dropout is not supported (inference tokenizers never set it)");
  }
  if (!tables.bad_merges.empty()) {
    throw error("tokenizer.json: merge " + std::to_string(tables.bad_merges.front()) +
                " is neither 'a b' nor [a, b]");
  }

  vocab_.reserve(tables.vocab.size());
  int32_t max_id = -1;
  for (auto& [token, id] : tables.vocab) {
    if (id < 0 || id > INT32_MAX) throw error("tokenizer.json: vocab id out of range for '" + token + "'");
    max_id = std::max(max_id, static_cast<int32_t>(id));
    vocab_.emplace(std::move(token), static_cast<int32_t>(id));
  }
  id_to_token_.resize(static_cast<size_t>(max_id + 1));
  id_present_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : vocab_) {
    id_to_token_[id] = token;
    id_present_[id] = true;
  }

  continuing_subword_prefix_ = optional_string(model, "continuing_subword_prefix");
  end_of_word_suffix_ = optional_string(model, "end_of_word_suffix");
  fuse_unk_ = optional_bool(model, "fuse_unk");
  byte_fallback_ = optional_bool(model, "byte_fallback");
  ignore_merges_ = optional_bool(model, "ignore_merges");
  std::string unk = optional_string(model, "unk_token");
  if (!unk.empty()) {
    auto it = vocab_.find(unk);
    if (it == vocab_.end()) throw error("tokenizer.json: unk_token '" + unk + "' is not in the vocab");
    unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto it = vocab_.find(name);
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }

  merges_.reserve(tables.merges.size());
  int32_t rank = 0;
  for (const auto& [left, right] : tables.merges) {
    auto a = vocab_.find(left), b = vocab_.find(right);
    std::string merged = left;
    // With a continuing-subword prefix the right part carries it, the merged token does not.
    if (!continuing_subword_prefix_.empty() &&
        right.compare(0, continuing_subword_prefix_.size(), continuing_subword_prefix_) == 0) {
      merged += right.substr(continuing_subword_prefix_.size());
    } else {
      merged += right;
    }
    auto c = vocab_.find(merged);
    if (a == vocab_.end() || b == vocab_.end() || c == vocab_.end()) {
      throw error("tokenizer.json: merge " + std::to_string(rank) + " ('" + left + "', '" + right +
                  "') uses a token that is not in the vocab");
    }
    // The first (lowest-rank) occurrence of a pair wins, as in tokenizers.
    merges_.emplace(pair_key(a->second, b->second), merge{rank, c->second});
    ++rank;
  }
}

std::optional<int32_t> bpe_model::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* bpe_model::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_present_[id]) return nullptr;
  return &id_to_token_[id];
}

void bpe_model::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  std::string key(word);
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mutex_);
  // A full cache stops taking new words rather than evicting: cheap and bounded.
  if (cache_.size() < k_cache_capacity) cache_.emplace(std::move(key), std::move(ids));
}

void bpe_model::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    auto it = vocab_.find(std::string(word));
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // Initial symbols: one per character, or its bytes (byte fallback), or the unknown token.
  std::vector<int32_t> ids;
  ids.reserve(word.size());
  bool pending_unk = false;
  std::string piece;
  for (size_t i = 0; i < word.size();) {
    size_t start = i;
    unicode::next_code_point(word, i);
    piece.clear();
    if (start > 0) piece += continuing_subword_prefix_;
    piece.append(word.substr(start, i - start));
    if (i == word.size()) piece += end_of_word_suffix_;
    auto it = vocab_.find(piece);
    if (it != vocab_.end()) {
      if (pending_unk) ids.push_back(*unk_id_);
      pending_unk = false;
      ids.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : piece) all = all && byte_ids_[b] >= 0;
      if (all) {
        for (unsigned char b : piece) ids.push_back(byte_ids_[b]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk && !fuse_unk_) ids.push_back(*unk_id_);
      pending_unk = true;
    }
    // Without an unknown token tokenizers fails the whole encode; dropping the character keeps a
    // server answering, and no real BPE vocabulary lacks a character it can produce.
  }
  if (pending_unk) ids.push_back(*unk_id_);

  // Merge the lowest-ranked adjacent pair first, leftmost on ties; a heap with lazy invalidation
  // keeps long words (a run of thousands of letters) from going quadratic.
  struct symbol {
    int32_t id;
    int32_t prev, next;
  };
  std::vector<symbol> sym(ids.size());
  for (size_t k = 0; k < ids.size(); ++k) {
    sym[k] =
        symbol{ids[k], static_cast<int32_t>(k) - 1, k + 1 < ids.size() ? static_cast<int32_t>(k + 1) : -1};
  }
  struct candidate {
    int32_t rank, pos, left, right, merged;
    bool operator>(const candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<candidate, std::vector<candidate>, std::greater<candidate>> heap;
  auto push_pair = [&](int32_t pos) {
    if (pos < 0 || sym[pos].next < 0) return;
    auto it = merges_.find(pair_key(sym[pos].id, sym[sym[pos].next].id));
    if (it != merges_.end()) {
      heap.push(candidate{it->second.rank, pos, sym[pos].id, sym[sym[pos].next].id, it->second.merged_id});
    }
  };
  for (size_t k = 0; k + 1 < sym.size(); ++k) push_pair(static_cast<int32_t>(k));
  while (!heap.empty()) {
    candidate c = heap.top();
    heap.pop();
    symbol& s = sym[c.pos];
    if (s.id != c.left || s.next < 0 || sym[s.next].id != c.right) continue;  // stale
    int32_t gone = s.next;
    s.id = c.merged;
    s.next = sym[gone].next;
    if (s.next >= 0) sym[s.next].prev = c.pos;
    sym[gone].id = -1;  // marks the absorbed symbol dead for stale entries
    sym[gone].next = -1;
    push_pair(s.prev);
    push_pair(c.pos);
  }
  for (int32_t k = sym.empty() ? -1 : 0; k >= 0; k = sym[k].next) out.push_back(sym[k].id);
}

}  // namespace troupe::tokenizer_detail
