#include "core/tokenizer_json.h"

#include "core/error.h"

namespace troupe::tokenizer_detail {

namespace {

using json = nlohmann::json;

class sax_reader : public nlohmann::json_sax<json> {
 public:
  explicit sax_reader(bpe_tables& t) : t_(t) {}
  json root;
  std::string error_message;

  bool null() override { return value(json()); }
  bool boolean(bool v) override { return value(v); }
  bool number_integer(number_integer_t v) override {
    if (mode_ == mode::vocab) {
      t_.vocab.emplace_back(std::move(key_), v);
      return true;
    }
    return value(v);
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (mode_ == mode::vocab) {
      t_.vocab.emplace_back(std::move(key_), static_cast<int64_t>(v));
      return true;
    }
    return value(v);
  }
  bool number_float(number_float_t v, const string_t&) override { return value(v); }
  bool string(string_t& v) override {
    if (mode_ == mode::merges) {
      size_t sp = v.find(' ');
      if (sp == std::string::npos || v.find(' ', sp + 1) != std::string::npos) {
        t_.bad_merges.push_back(t_.merges.size());
        t_.merges.emplace_back(std::move(v), std::string());
      } else {
        t_.merges.emplace_back(v.substr(0, sp), v.substr(sp + 1));
      }
      return true;
    }
    if (mode_ == mode::merge_pair) {
      pair_.push_back(std::move(v));
      return true;
    }
    return value(std::move(v));
  }
  bool binary(binary_t&) override { return false; }
  bool start_object(std::size_t) override {
    if (mode_ != mode::dom) return false;  // only numbers / strings belong in vocab and merges
    if (in_model_key("vocab")) {
      mode_ = mode::vocab;
      t_.has_vocab = true;
      return true;
    }
    return open(json::object());
  }
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    if (mode_ == mode::vocab) {
      mode_ = mode::dom;
      return true;
    }
    stack_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    if (mode_ == mode::merges) {
      mode_ = mode::merge_pair;
      pair_.clear();
      return true;
    }
    if (mode_ != mode::dom) return false;
    if (in_model_key("merges")) {
      mode_ = mode::merges;
      t_.has_merges = true;
      return true;
    }
    return open(json::array());
  }
  bool end_array() override {
    if (mode_ == mode::merge_pair) {
      if (pair_.size() == 2) {
        t_.merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
      } else {
        t_.bad_merges.push_back(t_.merges.size());
        t_.merges.emplace_back(std::string(), std::string());
      }
      mode_ = mode::merges;
      return true;
    }
    if (mode_ == mode::merges) {
      mode_ = mode::dom;
      return true;
    }
    stack_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    error_message = e.what();
    return false;
  }

 private:
  enum class mode { dom, vocab, merges, merge_pair };

  // True when the value about to open is root["model"][k].
  bool in_model_key(const char* k) const {
    return stack_.size() == 2 && stack_[1]->is_object() && key_ == k && model_open_;
  }
  bool value(json v) {
    if (stack_.empty()) {
      root = std::move(v);
      return true;
    }
    json* top = stack_.back();
    if (top->is_array())
      top->push_back(std::move(v));
    else
      (*top)[key_] = std::move(v);
    return true;
  }
  bool open(json v) {
    json* slot;
    if (stack_.empty()) {
      root = std::move(v);
      slot = &root;
    } else if (stack_.back()->is_array()) {
      stack_.back()->push_back(std::move(v));
      slot = &stack_.back()->back();
    } else {
      slot = &(*stack_.back())[key_];
      *slot = std::move(v);
    }
    // The model object is root["model"]: the only place vocab and merges are diverted.
    if (stack_.size() == 1) model_open_ = key_ == "model" && slot->is_object();
    stack_.push_back(slot);
    return true;
  }

  bpe_tables& t_;
  std::vector<json*> stack_;
  std::string key_;
  std::vector<std::string> pair_;
  mode mode_ = mode::dom;
  bool model_open_ = false;
};

}  // namespace

nlohmann::json parse_tokenizer_json(std::string_view text, const std::string& name, bpe_tables& tables) {
  sax_reader reader(tables);
  bool ok = false;
  try {
    ok = json::sax_parse(text.begin(), text.end(), &reader);
  } catch (const json::exception& e) {
    throw error(name + ": not valid JSON: " + e.what());
  }
  if (!ok) {
    throw error(name + ": not valid JSON: " +
                (reader.error_message.empty() ? std::string("unexpected structure in model vocab or merges")
                                              : reader.error_message));
  }
  return std::move(reader.root);
}

}  // namespace troupe::tokenizer_detail
