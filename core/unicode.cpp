#include "core/unicode.h"

#include <algorithm>
#include <vector>

#include "core/unicode_tables.h"

namespace troupe::unicode {

namespace ut = unicode_tables;

namespace {

// Hangul syllables compose and decompose arithmetically (Unicode 3.12), so the tables leave them out.
constexpr uint32_t k_s_base = 0xAC00, k_l_base = 0x1100, k_v_base = 0x1161, k_t_base = 0x11A7;
constexpr uint32_t k_l_count = 19, k_v_count = 21, k_t_count = 28;
constexpr uint32_t k_n_count = k_v_count * k_t_count, k_s_count = k_l_count * k_n_count;

bool is_cont(unsigned char b) { return (b & 0xC0) == 0x80; }

// The valid range of the second byte after a lead byte (the rest are always 80..BF); this is what
// makes overlong forms and surrogates invalid.
bool second_byte_ok(unsigned char lead, unsigned char b) {
  switch (lead) {
    case 0xE0:
      return b >= 0xA0 && b <= 0xBF;
    case 0xED:
      return b >= 0x80 && b <= 0x9F;
    case 0xF0:
      return b >= 0x90 && b <= 0xBF;
    case 0xF4:
      return b >= 0x80 && b <= 0x8F;
    default:
      return is_cont(b);
  }
}

const ut::decomp_entry* find_decomp(uint32_t cp) {
  const ut::decomp_entry* end = ut::k_decomp + ut::k_decomp_count;
  const ut::decomp_entry* it =
      std::lower_bound(ut::k_decomp, end, cp, [](const ut::decomp_entry& e, uint32_t c) { return e.cp < c; });
  return it != end && it->cp == cp ? it : nullptr;
}

// The primary composite of (a, b), or 0 when there is none.
uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= k_l_base && a < k_l_base + k_l_count && b >= k_v_base && b < k_v_base + k_v_count) {
    return k_s_base + ((a - k_l_base) * k_v_count + (b - k_v_base)) * k_t_count;
  }
  if (a >= k_s_base && a < k_s_base + k_s_count && (a - k_s_base) % k_t_count == 0 && b > k_t_base &&
      b < k_t_base + k_t_count) {
    return a + (b - k_t_base);
  }
  const ut::compose_entry* end = ut::k_compose + ut::k_compose_count;
  const ut::compose_entry* it =
      std::lower_bound(ut::k_compose, end, std::make_pair(a, b), [](const ut::compose_entry& e, auto key) {
        return e.first < key.first || (e.first == key.first && e.second < key.second);
      });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

// Full canonical decomposition followed by the canonical ordering of combining marks.
std::vector<uint32_t> decompose(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = next_code_point(s, i);
    if (cp >= k_s_base && cp < k_s_base + k_s_count) {
      uint32_t index = cp - k_s_base;
      out.push_back(k_l_base + index / k_n_count);
      out.push_back(k_v_base + (index % k_n_count) / k_t_count);
      if (index % k_t_count != 0) out.push_back(k_t_base + index % k_t_count);
    } else if (const ut::decomp_entry* d = find_decomp(cp)) {
      out.insert(out.end(), ut::k_decomp_data + d->offset, ut::k_decomp_data + d->offset + d->length);
    } else {
      out.push_back(cp);
    }
  }
  // Runs of non-starters are stably sorted by combining class; runs are short, so insertion sort.
  for (size_t i = 1; i < out.size(); ++i) {
    uint8_t c = combining_class(out[i]);
    if (c == 0) continue;
    for (size_t j = i; j > 0; --j) {
      uint8_t prev = combining_class(out[j - 1]);
      if (prev == 0 || prev <= c) break;
      std::swap(out[j - 1], out[j]);
    }
  }
  return out;
}

bool all_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

}  // namespace

size_t utf8_sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 1;
}

uint32_t next_code_point(std::string_view s, size_t& i) {
  auto b0 = static_cast<unsigned char>(s[i]);
  size_t n = utf8_sequence_length(b0);
  if (n == 1) {
    ++i;
    return b0 < 0x80 ? b0 : k_replacement_char;
  }
  // Consume the longest valid prefix; a break there is one maximal invalid subpart.
  if (i + 1 >= s.size() || !second_byte_ok(b0, static_cast<unsigned char>(s[i + 1]))) {
    i += 1;
    return k_replacement_char;
  }
  for (size_t k = 2; k < n; ++k) {
    if (i + k >= s.size() || !is_cont(static_cast<unsigned char>(s[i + k]))) {
      i += k;
      return k_replacement_char;
    }
  }
  uint32_t cp = n == 2 ? (b0 & 0x1F) : n == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t start = i;
    uint32_t cp = next_code_point(s, i);
    // A literal U+FFFD in the input is valid; a replacement from bad bytes is not.
    if (cp == k_replacement_char && !(i - start == 3 && s.substr(start, 3) == "\xEF\xBF\xBD")) return false;
  }
  return true;
}

std::string from_utf8_lossy(std::string_view bytes) {
  if (all_ascii(bytes)) return std::string(bytes);
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    size_t start = i;
    uint32_t cp = next_code_point(bytes, i);
    if (cp == k_replacement_char) {
      append_utf8(out, cp);
    } else {
      out.append(bytes.substr(start, i - start));
    }
  }
  return out;
}

std::string nfd(std::string_view s) {
  if (all_ascii(s)) return std::string(s);
  std::string out;
  out.reserve(s.size());
  for (uint32_t cp : decompose(s)) append_utf8(out, cp);
  return out;
}

std::string nfc(std::string_view s) {
  if (all_ascii(s)) return std::string(s);
  std::vector<uint32_t> cps = decompose(s);
  std::vector<uint32_t> out;
  out.reserve(cps.size());
  bool have_starter = false;
  size_t starter = 0;
  for (uint32_t cp : cps) {
    int cc = combining_class(cp);
    if (have_starter) {
      // C composes with the last starter unless a character between them is blocking: one of class
      // 0 or of a class >= C's. After canonical ordering only the last one needs checking.
      bool adjacent = starter + 1 == out.size();
      int last = combining_class(out.back());
      if (adjacent || (last != 0 && last < cc)) {
        if (uint32_t comp = compose_pair(out[starter], cp)) {
          out[starter] = comp;
          continue;
        }
      }
    }
    if (cc == 0) {
      have_starter = true;
      starter = out.size();
    }
    out.push_back(cp);
  }
  std::string res;
  res.reserve(s.size());
  for (uint32_t cp : out) append_utf8(res, cp);
  return res;
}

bool is_whitespace(uint32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_alphanumeric(uint32_t cp) {
  const ut::range_entry* end = ut::k_alnum + ut::k_alnum_count;
  const ut::range_entry* it = std::upper_bound(
      ut::k_alnum, end, cp, [](uint32_t c, const ut::range_entry& r) { return c < r.first; });
  if (it == ut::k_alnum) return false;
  --it;
  return cp >= it->first && cp <= it->last;
}

uint8_t combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  const ut::ccc_entry* end = ut::k_ccc + ut::k_ccc_count;
  const ut::ccc_entry* it =
      std::lower_bound(ut::k_ccc, end, cp, [](const ut::ccc_entry& e, uint32_t c) { return e.cp < c; });
  return it != end && it->cp == cp ? it->ccc : 0;
}

}  // namespace troupe::unicode
