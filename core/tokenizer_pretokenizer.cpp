#include "core/tokenizer_pretokenizer.h"

#include <algorithm>
#include <array>

#include "core/error.h"
#include "core/tokenizer_normalizer.h"
#include "core/unicode.h"

namespace troupe::tokenizer_detail {

namespace {

// The GPT-2 pattern ByteLevel splits with when use_regex is set.
const char* const k_gpt2_pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct byte_map {
  std::array<std::string, 256> to_char;
  std::array<int, 324> to_byte;  // code points 0..323 cover the whole image of the map
  byte_map() {
    to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
      unicode::append_utf8(to_char[b], cp);
      to_byte[cp] = b;
    }
  }
};

const byte_map& bytes() {
  static const byte_map m;
  return m;
}

}  // namespace

const std::string& byte_to_unicode(unsigned char b) { return bytes().to_char[b]; }

int unicode_to_byte(uint32_t cp) { return cp < bytes().to_byte.size() ? bytes().to_byte[cp] : -1; }

pre_tokenizer::pre_tokenizer(const nlohmann::json& j) {
  if (!j.is_null()) add(j);
}

void pre_tokenizer::add(const nlohmann::json& j) {
  std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const auto& p : j.at("pretokenizers")) add(p);
  } else if (type == "Split") {
    step s(kind::split);
    s.re = std::make_shared<regex>(pattern_to_regex(j.at("pattern"), "pre_tokenizer Split"),
                                   "pre_tokenizer Split");
    std::string how = j.value("behavior", "Isolated");
    if (how == "Removed")
      s.how = behavior::removed;
    else if (how == "Isolated")
      s.how = behavior::isolated;
    else if (how == "MergedWithPrevious")
      s.how = behavior::merged_with_previous;
    else if (how == "MergedWithNext")
      s.how = behavior::merged_with_next;
    else if (how == "Contiguous")
      s.how = behavior::contiguous;
    else
      throw error("tokenizer.json: pre_tokenizer Split has unknown behavior '" + how + "'");
    s.invert = j.value("invert", false);
    steps_.push_back(std::move(s));
  } else if (type == "ByteLevel") {
    step s(kind::byte_level);
    s.add_prefix_space = j.value("add_prefix_space", true);
    if (j.value("use_regex", true)) s.re = std::make_shared<regex>(k_gpt2_pattern, "pre_tokenizer ByteLevel");
    steps_.push_back(std::move(s));
  } else if (type == "Metaspace") {
    step s(kind::metaspace);
    s.replacement = j.value("replacement", "\xE2\x96\x81");
    std::string scheme = j.value("prepend_scheme", "");
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";  // older files
    if (scheme == "always")
      s.scheme = prepend::always;
    else if (scheme == "first")
      s.scheme = prepend::first;
    else if (scheme == "never")
      s.scheme = prepend::never;
    else
      throw error("tokenizer.json: pre_tokenizer Metaspace has unknown prepend_scheme '" + scheme + "'");
    s.split = j.value("split", true);
    if (s.split) s.re = std::make_shared<regex>(regex::escape(s.replacement), "pre_tokenizer Metaspace");
    s.how = behavior::merged_with_next;
    steps_.push_back(std::move(s));
  } else if (type == "Digits") {
    step s(kind::split);
    s.re = std::make_shared<regex>(j.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)",
                                   "pre_tokenizer Digits");
    steps_.push_back(std::move(s));
  } else if (type == "WhitespaceSplit") {
    step s(kind::split);
    s.re = std::make_shared<regex>(R"(\s+)", "pre_tokenizer WhitespaceSplit");
    s.how = behavior::removed;
    steps_.push_back(std::move(s));
  } else if (type == "Whitespace") {
    step s(kind::split);
    s.re = std::make_shared<regex>(R"(\w+|[^\w\s]+)", "pre_tokenizer Whitespace");
    s.how = behavior::removed;
    s.invert = true;  // keep the matches, drop what lies between
    steps_.push_back(std::move(s));
  } else {
    throw error("tokenizer.json: unsupported pre_tokenizer type '" + type +
                "' (supported: Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit, Sequence)");
  }
}

void pre_tokenizer::split_by(const std::string& w, const regex& re, behavior how, bool invert,
                             std::vector<std::string>& out) {
  // (begin, end, is_match) covering w, as tokenizers' Pattern::find_matches.
  struct span {
    size_t b, e;
    bool match;
  };
  std::vector<span> spans;
  size_t prev = 0;
  for (auto [b, e] : re.find_all(w)) {
    if (prev != b) spans.push_back({prev, b, invert});
    spans.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != w.size()) spans.push_back({prev, w.size(), invert});

  std::vector<span> pieces;
  switch (how) {
    case behavior::isolated:
      pieces.swap(spans);
      break;
    case behavior::removed:
      for (const span& s : spans)
        if (!s.match) pieces.push_back(s);
      break;
    case behavior::merged_with_previous: {
      bool prev_match = false;
      for (const span& s : spans) {
        if (s.match && !prev_match && !pieces.empty())
          pieces.back().e = s.e;
        else
          pieces.push_back(s);
        prev_match = s.match;
      }
      break;
    }
    case behavior::merged_with_next: {
      bool prev_match = false;
      for (size_t i = spans.size(); i-- > 0;) {
        const span& s = spans[i];
        if (s.match && !prev_match && !pieces.empty())
          pieces.back().b = s.b;
        else
          pieces.push_back(s);
        prev_match = s.match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    }
    case behavior::contiguous: {
      bool prev_match = false;
      for (const span& s : spans) {
        if (s.match == prev_match && !pieces.empty())
          pieces.back().e = s.e;
        else
          pieces.push_back(s);
        prev_match = s.match;
      }
      break;
    }
  }
  for (const span& s : pieces)
    if (s.e > s.b) out.push_back(w.substr(s.b, s.e - s.b));
}

void pre_tokenizer::apply(const std::string& piece, bool first_piece, std::vector<std::string>& out) const {
  std::vector<std::string> words{piece}, next;
  for (const step& st : steps_) {
    next.clear();
    for (size_t wi = 0; wi < words.size(); ++wi) {
      std::string& w = words[wi];
      switch (st.k) {
        case kind::split:
          split_by(w, *st.re, st.how, st.invert, next);
          break;
        case kind::byte_level: {
          if (st.add_prefix_space && (w.empty() || w[0] != ' ')) w.insert(w.begin(), ' ');
          std::vector<std::string> parts;
          if (st.re)
            split_by(w, *st.re, behavior::isolated, false, parts);
          else
            parts.push_back(std::move(w));
          for (const std::string& p : parts) {
            std::string mapped;
            mapped.reserve(p.size() * 2);
            for (unsigned char b : p) mapped += byte_to_unicode(b);
            next.push_back(std::move(mapped));
          }
          break;
        }
        case kind::metaspace: {
          std::string m = replace_all(w, " ", st.replacement);
          bool starts = m.compare(0, st.replacement.size(), st.replacement) == 0;
          bool want = st.scheme == prepend::always || (st.scheme == prepend::first && first_piece && wi == 0);
          if (want && !starts) m = st.replacement + m;
          if (st.re)
            split_by(m, *st.re, behavior::merged_with_next, false, next);
          else
            next.push_back(std::move(m));
          break;
        }
      }
    }
    words.swap(next);
  }
  for (std::string& w : words)
    if (!w.empty()) out.push_back(std::move(w));
}

}  // namespace troupe::tokenizer_detail
