#include "core/tokenizer_decoder.h"

#include "core/error.h"
#include "core/tokenizer_normalizer.h"
#include "core/tokenizer_pretokenizer.h"
#include "core/unicode.h"

namespace troupe::tokenizer_detail {

namespace {

// "<0xAB>" -> 0xAB, or -1 for anything else.
int parse_byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

decoder::decoder(const nlohmann::json& j) {
  if (j.is_null()) return;
  present_ = true;
  add(j);
}

void decoder::add(const nlohmann::json& j) {
  std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const auto& d : j.at("decoders")) add(d);
  } else if (type == "ByteLevel") {
    steps_.push_back(step(kind::byte_level));
  } else if (type == "Replace") {
    const auto& p = j.at("pattern");
    if (!p.contains("String")) throw error("tokenizer.json: decoder Replace supports only String patterns");
    step s(kind::replace);
    s.from = p["String"].get<std::string>();
    s.to = j.at("content").get<std::string>();
    steps_.push_back(std::move(s));
  } else if (type == "ByteFallback") {
    steps_.push_back(step(kind::byte_fallback));
  } else if (type == "Fuse") {
    steps_.push_back(step(kind::fuse));
  } else if (type == "Strip") {
    step s(kind::strip);
    s.from = j.at("content").get<std::string>();
    s.start = j.value("start", 0);
    s.stop = j.value("stop", 0);
    steps_.push_back(std::move(s));
  } else if (type == "Metaspace") {
    step s(kind::metaspace);
    s.from = j.value("replacement", "\xE2\x96\x81");
    std::string scheme = j.value("prepend_scheme", "");
    s.prepend = scheme.empty() ? j.value("add_prefix_space", true) : scheme != "never";
    steps_.push_back(std::move(s));
  } else {
    throw error("tokenizer.json: unsupported decoder type '" + type +
                "' (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)");
  }
}

std::string decoder::decode(std::vector<std::string> tokens) const {
  if (!present_) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const step& st : steps_) {
    switch (st.k) {
      case kind::byte_level: {
        // All tokens become one byte string; a token with a character outside the byte map (an added
        // token such as an emoji) contributes its own UTF-8 bytes.
        std::string raw;
        for (const std::string& t : tokens) {
          std::string b;
          bool mapped = true;
          for (size_t i = 0; i < t.size() && mapped;) {
            int v = unicode_to_byte(unicode::next_code_point(t, i));
            if (v < 0)
              mapped = false;
            else
              b.push_back(static_cast<char>(v));
          }
          raw += mapped ? b : t;
        }
        tokens.assign(1, unicode::from_utf8_lossy(raw));
        break;
      }
      case kind::replace:
        for (std::string& t : tokens) t = replace_all(t, st.from, st.to);
        break;
      case kind::byte_fallback: {
        std::vector<std::string> out;
        std::string pending;
        auto flush = [&] {
          if (pending.empty()) return;
          if (unicode::is_valid_utf8(pending)) {
            out.push_back(pending);
          } else {
            // tokenizers gives one U+FFFD per byte of an invalid run, not per maximal subpart.
            for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
          }
          pending.clear();
        };
        for (std::string& t : tokens) {
          int b = parse_byte_token(t);
          if (b >= 0) {
            pending.push_back(static_cast<char>(b));
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case kind::fuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case kind::strip:
        for (std::string& t : tokens) {
          size_t b = 0, e = t.size();
          for (size_t n = 0; n < st.start && t.compare(b, st.from.size(), st.from) == 0; ++n)
            b += st.from.size();
          for (size_t n = 0; n < st.stop && e >= b + st.from.size() &&
                             t.compare(e - st.from.size(), st.from.size(), st.from) == 0;
               ++n) {
            e -= st.from.size();
          }
          t = t.substr(b, e - b);
        }
        break;
      case kind::metaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          // The first token loses its replacement characters when a prefix was prepended.
          tokens[i] = replace_all(tokens[i], st.from, i == 0 && st.prepend ? "" : " ");
        }
        break;
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

post_processor::post_processor(const nlohmann::json& j) {
  if (!j.is_null()) add(j);
}

void post_processor::set(std::vector<int32_t> prefix, std::vector<int32_t> suffix) {
  prefix_ = std::move(prefix);
  suffix_ = std::move(suffix);
}

void post_processor::add(const nlohmann::json& j) {
  std::string type = j.value("type", "");
  std::vector<int32_t> pre, post;
  if (type == "Sequence") {
    for (const auto& p : j.at("processors")) add(p);
    return;
  } else if (type == "ByteLevel") {
    return;  // only trims offsets, which troupe does not report
  } else if (type == "TemplateProcessing") {
    const auto& specials = j.at("special_tokens");
    bool seen_sequence = false;
    for (const auto& item : j.at("single")) {
      if (item.contains("Sequence")) {
        if (seen_sequence) throw error("tokenizer.json: TemplateProcessing 'single' repeats the sequence");
        seen_sequence = true;
      } else if (item.contains("SpecialToken")) {
        std::string name = item["SpecialToken"].at("id").get<std::string>();
        auto it = specials.find(name);
        if (it == specials.end()) {
          throw error("tokenizer.json: TemplateProcessing uses special token '" + name +
                      "' it does not define");
        }
        for (const auto& id : it->at("ids")) (seen_sequence ? post : pre).push_back(id.get<int32_t>());
      } else {
        throw error("tokenizer.json: TemplateProcessing item is neither Sequence nor SpecialToken: " +
                    item.dump());
      }
    }
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    auto id_of = [&](const char* key) {
      const auto& pair = j.at(key);  // [token, id]
      return pair.at(1).get<int32_t>();
    };
    pre.push_back(id_of("cls"));
    post.push_back(id_of("sep"));
  } else {
    throw error("tokenizer.json: unsupported post_processor type '" + type +
                "' (supported: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence)");
  }
  // A later processor wraps what the earlier ones produced.
  pre.insert(pre.end(), prefix_.begin(), prefix_.end());
  suffix_.insert(suffix_.end(), post.begin(), post.end());
  prefix_ = std::move(pre);
}

std::vector<int32_t> post_processor::apply(const std::vector<int32_t>& ids) const {
  std::vector<int32_t> out;
  out.reserve(prefix_.size() + ids.size() + suffix_.size());
  out.insert(out.end(), prefix_.begin(), prefix_.end());
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), suffix_.begin(), suffix_.end());
  return out;
}

}  // namespace troupe::tokenizer_detail
