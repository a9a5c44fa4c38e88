#include "core/tokenizer.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/tokenizer_added.h"
#include "core/tokenizer_bpe.h"
#include "core/tokenizer_decoder.h"
#include "core/tokenizer_json.h"
#include "core/tokenizer_normalizer.h"
#include "core/tokenizer_pretokenizer.h"
#include "core/unicode.h"

namespace troupe {

using namespace tokenizer_detail;

struct tokenizer::impl {
  normalizer norm;
  pre_tokenizer pre;
  std::shared_ptr<const bpe_model> model;  // shared: load_dir copies the rest to adjust it
  decoder dec;
  post_processor post;
  added_vocabulary added;
  std::optional<int32_t> bos_id, eos_id;

  impl(const nlohmann::json& j, bpe_tables tables)
      : norm(j.value("normalizer", nlohmann::json())),
        pre(j.value("pre_tokenizer", nlohmann::json())),
        model(std::make_shared<const bpe_model>(j.at("model"), std::move(tables))),
        dec(j.value("decoder", nlohmann::json())),
        post(j.value("post_processor", nlohmann::json())),
        added(j.value("added_tokens", nlohmann::json()), norm) {
    // Without tokenizer_config.json the template's leading special token is the best BOS guess.
    if (!post.prefix().empty()) bos_id = post.prefix().front();
  }
};

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw error("cannot open " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A tokenizer_config.json token: "text", {"content": "text", ...} or null.
std::optional<std::string> config_token(const nlohmann::json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content")) return (*it)["content"].get<std::string>();
  throw error(std::string("tokenizer_config.json: ") + key + " is neither a string nor {\"content\": ...}");
}

}  // namespace

tokenizer tokenizer::from_json(std::string_view tokenizer_json, const std::string& name) {
  bpe_tables tables;
  nlohmann::json j = parse_tokenizer_json(tokenizer_json, name, tables);
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    throw error(name + ": no \"model\" object");
  try {
    return tokenizer(std::make_shared<const impl>(j, std::move(tables)));
  } catch (const troupe::error& e) {
    std::string msg = e.what();
    // Component errors say "tokenizer.json: ..."; name the real file instead.
    if (msg.rfind("tokenizer.json: ", 0) == 0) msg = msg.substr(16);
    throw error(name + ": " + msg);
  } catch (const nlohmann::json::exception& e) {
    throw error(name + ": malformed component: " + e.what());
  }
}

tokenizer tokenizer::load(const std::string& tokenizer_json_path) {
  return from_json(read_file(tokenizer_json_path), tokenizer_json_path);
}

tokenizer tokenizer::load_dir(const std::string& model_dir) {
  tokenizer t = load(model_dir + "/tokenizer.json");
  std::string cfg_path = model_dir + "/tokenizer_config.json";
  std::ifstream probe(cfg_path);
  if (!probe) return t;
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(read_file(cfg_path));
  } catch (const nlohmann::json::exception& e) {
    throw error(cfg_path + ": not valid JSON: " + e.what());
  }
  auto p = std::make_shared<impl>(*t.impl_);
  auto resolve = [&](const char* key, std::optional<int32_t>& id) {
    if (auto tok = config_token(cfg, key)) {
      id = t.token_to_id(*tok);
      if (!id) throw error(cfg_path + ": " + key + " '" + *tok + "' is not in the vocabulary");
    } else if (cfg.contains(key)) {
      id.reset();  // an explicit null: the model has none
    }
  };
  resolve("bos_token", p->bos_id);
  resolve("eos_token", p->eos_id);
  if (cfg.contains("add_bos_token") || cfg.contains("add_eos_token")) {
    std::vector<int32_t> prefix, suffix;
    if (cfg.value("add_bos_token", false) && p->bos_id) prefix.push_back(*p->bos_id);
    if (cfg.value("add_eos_token", false) && p->eos_id) suffix.push_back(*p->eos_id);
    p->post.set(std::move(prefix), std::move(suffix));
  }
  return tokenizer(std::move(p));
}

std::vector<int32_t> tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const impl& m = *impl_;
  std::string clean;
  if (!unicode::is_valid_utf8(text)) {
    clean = unicode::from_utf8_lossy(text);
    text = clean;
  }
  std::vector<int32_t> ids;
  std::vector<text_piece> raw, normalized;
  std::vector<std::string> words;
  m.added.split(text, false, raw);
  for (const text_piece& piece : raw) {
    if (piece.id >= 0) {
      ids.push_back(piece.id);
      continue;
    }
    std::string n = m.norm.apply(piece.text);
    if (n.empty()) continue;
    normalized.clear();
    m.added.split(n, true, normalized);
    for (const text_piece& sub : normalized) {
      if (sub.id >= 0) {
        ids.push_back(sub.id);
        continue;
      }
      words.clear();
      m.pre.apply(sub.text, piece.offset == 0 && sub.offset == 0, words);
      for (const std::string& w : words) m.model->tokenize(w, ids);
    }
  }
  return add_special_tokens ? m.post.apply(ids) : ids;
}

std::string tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const added_token* a = m.added.find(id)) {
      if (!(skip_special_tokens && a->special)) tokens.push_back(a->content);
    } else if (const std::string* t = m.model->id_to_token(id)) {
      tokens.push_back(*t);
    }
  }
  return m.dec.decode(std::move(tokens));
}

int32_t tokenizer::vocab_size() const { return std::max(impl_->model->max_id(), impl_->added.max_id()) + 1; }

std::optional<int32_t> tokenizer::token_to_id(std::string_view token) const {
  std::string key(token);
  if (auto id = impl_->added.find(key)) return id;
  return impl_->model->token_to_id(key);
}

std::string tokenizer::id_to_token(int32_t id) const {
  if (const added_token* a = impl_->added.find(id)) return a->content;
  const std::string* t = impl_->model->id_to_token(id);
  return t ? *t : std::string();
}

std::optional<int32_t> tokenizer::bos_id() const { return impl_->bos_id; }
std::optional<int32_t> tokenizer::eos_id() const { return impl_->eos_id; }

std::optional<std::string> tokenizer::bos_token() const {
  if (!impl_->bos_id) return std::nullopt;
  return id_to_token(*impl_->bos_id);
}

std::optional<std::string> tokenizer::eos_token() const {
  if (!impl_->eos_id) return std::nullopt;
  return id_to_token(*impl_->eos_id);
}

bool tokenizer::is_special(int32_t id) const {
  const added_token* a = impl_->added.find(id);
  return a != nullptr && a->special;
}

}  // namespace troupe
