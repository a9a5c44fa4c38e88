#include "core/tokenizer_normalizer.h"

#include "core/error.h"
#include "core/unicode.h"

namespace troupe::tokenizer_detail {

std::string pattern_to_regex(const nlohmann::json& pattern, const std::string& what) {
  if (pattern.is_object() && pattern.contains("String"))
    return regex::escape(pattern["String"].get<std::string>());
  if (pattern.is_object() && pattern.contains("Regex")) return pattern["Regex"].get<std::string>();
  throw error(what + ": pattern must be {\"String\": ...} or {\"Regex\": ...}, got " + pattern.dump());
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
    out.append(s.substr(pos, hit - pos));
    out.append(to);
  }
  out.append(s.substr(pos));
  return out;
}

normalizer::normalizer(const nlohmann::json& j) {
  if (!j.is_null()) add(j);
}

void normalizer::add(const nlohmann::json& j) {
  std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const auto& n : j.at("normalizers")) add(n);
  } else if (type == "NFC") {
    steps_.push_back(step{kind::nfc, {}, {}, nullptr});
  } else if (type == "NFD") {
    steps_.push_back(step{kind::nfd, {}, {}, nullptr});
  } else if (type == "Prepend") {
    steps_.push_back(step{kind::prepend, j.at("prepend").get<std::string>(), {}, nullptr});
  } else if (type == "Replace") {
    step s{kind::replace, {}, j.at("content").get<std::string>(), nullptr};
    const auto& p = j.at("pattern");
    if (p.contains("String")) {
      s.text = p["String"].get<std::string>();
    } else {
      s.re = std::make_shared<regex>(pattern_to_regex(p, "normalizer Replace"), "normalizer Replace");
    }
    steps_.push_back(std::move(s));
  } else if (type == "Strip") {
    step s{kind::strip, {}, {}, nullptr};
    s.left = j.value("strip_left", false);
    s.right = j.value("strip_right", false);
    steps_.push_back(std::move(s));
  } else {
    throw error("tokenizer.json: unsupported normalizer type '" + type +
                "' (supported: NFC, NFD, Prepend, Replace, Strip, Sequence)");
  }
}

std::string normalizer::apply(std::string s) const {
  for (const step& st : steps_) {
    switch (st.k) {
      case kind::nfc:
        s = unicode::nfc(s);
        break;
      case kind::nfd:
        s = unicode::nfd(s);
        break;
      case kind::prepend:
        if (!s.empty()) s = st.text + s;  // tokenizers leaves an empty string empty
        break;
      case kind::replace:
        if (st.re) {
          std::string out;
          size_t pos = 0;
          for (auto [b, e] : st.re->find_all(s)) {
            out.append(s, pos, b - pos);
            out += st.content;
            pos = e;
          }
          out.append(s, pos, std::string::npos);
          s = std::move(out);
        } else {
          s = replace_all(s, st.text, st.content);
        }
        break;
      case kind::strip: {
        size_t b = 0, e = s.size();
        if (st.left) {
          for (size_t i = 0; i < s.size() && unicode::is_whitespace(unicode::next_code_point(s, i));) b = i;
        }
        if (st.right) {
          e = b;  // end of the last non-whitespace character
          for (size_t i = b; i < s.size();) {
            if (!unicode::is_whitespace(unicode::next_code_point(s, i))) e = i;
          }
        }
        s = s.substr(b, e - b);
        break;
      }
    }
  }
  return s;
}

}  // namespace troupe::tokenizer_detail
