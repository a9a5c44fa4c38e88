#include "core/chat_template/js_text.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace troupe::jinja {

namespace {
constexpr char32_t kReplacement = 0xFFFD;

// Decodes one code point at s[pos]; advances pos. Invalid sequences yield U+FFFD for one byte.
char32_t decode_one(std::string_view s, size_t& pos) {
  auto c = static_cast<unsigned char>(s[pos]);
  if (c < 0x80) {
    ++pos;
    return c;
  }
  int n = c >= 0xF8 ? -1 : c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : -1;
  if (n < 0 || pos + static_cast<size_t>(n) >= s.size()) {
    ++pos;
    return kReplacement;
  }
  char32_t cp = c & (0x3F >> n);
  for (int i = 1; i <= n; ++i) {
    auto cc = static_cast<unsigned char>(s[pos + i]);
    if ((cc & 0xC0) != 0x80) {
      ++pos;
      return kReplacement;
    }
    cp = (cp << 6) | (cc & 0x3F);
  }
  pos += n + 1;
  return cp;
}
}  // namespace

std::vector<char32_t> utf8_decode(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) out.push_back(decode_one(s, pos));
  return out;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp >= 0xD800 && cp <= 0xDFFF) cp = kReplacement;  // a lone surrogate cannot be UTF-8
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string utf8_encode(const std::vector<char32_t>& cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t cp : cps) utf8_append(out, cp);
  return out;
}

bool js_is_space(char32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
    case 0xFEFF:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

size_t js_space_at(std::string_view s, size_t pos) {
  if (pos >= s.size()) return 0;
  size_t next = pos;
  char32_t cp = decode_one(s, next);
  return js_is_space(cp) ? next - pos : 0;
}

std::string js_trim_start(std::string_view s) {
  size_t pos = 0;
  while (size_t n = js_space_at(s, pos)) pos += n;
  return std::string(s.substr(pos));
}

std::string js_trim_end(std::string_view s) {
  // Scan forward, remembering where the last run of white space began.
  size_t pos = 0, end = 0;
  while (pos < s.size()) {
    if (size_t n = js_space_at(s, pos)) {
      pos += n;
    } else {
      decode_one(s, pos);
      end = pos;
    }
  }
  return std::string(s.substr(0, end));
}

std::string js_trim(std::string_view s) { return js_trim_end(js_trim_start(s)); }

size_t js_length(std::string_view s) {
  size_t n = 0;
  for (size_t pos = 0; pos < s.size();) n += decode_one(s, pos) > 0xFFFF ? 2 : 1;
  return n;
}

std::optional<std::string> js_char_at(std::string_view s, int64_t index) {
  std::vector<char32_t> units;  // UTF-16 code units
  for (char32_t cp : utf8_decode(s)) {
    if (cp > 0xFFFF) {
      units.push_back(0xD800 + ((cp - 0x10000) >> 10));
      units.push_back(0xDC00 + ((cp - 0x10000) & 0x3FF));
    } else {
      units.push_back(cp);
    }
  }
  auto n = static_cast<int64_t>(units.size());
  if (index < 0) index += n;
  if (index < 0 || index >= n) return std::nullopt;
  std::string out;
  utf8_append(out, units[static_cast<size_t>(index)]);
  return out;
}

namespace {
// Upper-case mapping of one code point; ß is handled by the caller (it becomes two letters).
char32_t upper_of(char32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if (c < 0x80) return c;
  if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 32;
  if (c == 0xFF) return 0x178;
  if (c == 0xB5) return 0x39C;
  if ((c >= 0x100 && c <= 0x12F) || (c >= 0x132 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) {
    return (c & 1) ? c - 1 : c;
  }
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c : c - 1;
  if (c == 0x131) return 'I';
  if (c == 0x17F) return 'S';
  if (c >= 0x3B1 && c <= 0x3C9) return c == 0x3C2 ? 0x3A3 : c - 32;
  if (c == 0x3AC) return 0x386;
  if (c >= 0x3AD && c <= 0x3AF) return c - 37;
  if (c == 0x3CC) return 0x38C;
  if (c == 0x3CD || c == 0x3CE) return c - 63;
  if (c >= 0x430 && c <= 0x44F) return c - 32;
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  return c;
}

char32_t lower_of(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0x80) return c;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if (c == 0x178) return 0xFF;
  if ((c >= 0x100 && c <= 0x12F) || (c >= 0x132 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) {
    return (c & 1) ? c : c + 1;
  }
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c + 1 : c;
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
  if (c == 0x386) return 0x3AC;
  if (c >= 0x388 && c <= 0x38A) return c + 37;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x38E || c == 0x38F) return c + 63;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  return c;
}
}  // namespace

std::string js_upper(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    char32_t c = decode_one(s, pos);
    if (c == 0xDF) {
      out += "SS";
    } else {
      utf8_append(out, upper_of(c));
    }
  }
  return out;
}

std::string js_lower(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    char32_t c = decode_one(s, pos);
    if (c == 0x130) {
      out += "i\xCC\x87";  // İ lower-cases to i + combining dot above
    } else {
      utf8_append(out, lower_of(c));
    }
  }
  return out;
}

std::string js_title(std::string_view s) {
  auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  std::string out(s);
  for (size_t i = 0; i < out.size(); ++i) {
    if (word(out[i]) && (i == 0 || !word(out[i - 1])) && out[i] >= 'a' && out[i] <= 'z') out[i] -= 32;
  }
  return out;
}

std::string js_number_string(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x < 0 ? "-Infinity" : "Infinity";
  if (x == 0) return "0";
  std::string sign = x < 0 ? "-" : "";
  double a = std::fabs(x);
  // Shortest digit string that reads back as the same double.
  char buf[40];
  int precision = 1;
  for (; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*e", precision - 1, a);
    if (std::strtod(buf, nullptr) == a) break;
  }
  std::string mant, digits;
  const char* e = std::strchr(buf, 'e');
  for (const char* p = buf; p < e; ++p) {
    if (*p != '.') digits += *p;
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  int exp10 = std::atoi(e + 1);
  int k = static_cast<int>(digits.size());
  int n = exp10 + 1;  // value = 0.digits * 10^n
  std::string out;
  if (k <= n && n <= 21) {
    out = digits + std::string(static_cast<size_t>(n - k), '0');
  } else if (0 < n && n <= 21) {
    out = digits.substr(0, static_cast<size_t>(n)) + "." + digits.substr(static_cast<size_t>(n));
  } else if (-6 < n && n <= 0) {
    out = "0." + std::string(static_cast<size_t>(-n), '0') + digits;
  } else {
    out = digits.substr(0, 1);
    if (k > 1) out += "." + digits.substr(1);
    out += "e";
    out += n - 1 >= 0 ? "+" : "-";
    out += std::to_string(std::abs(n - 1));
  }
  return sign + out;
}

namespace {
size_t skip_js_space(std::string_view s, size_t pos) {
  while (size_t n = js_space_at(s, pos)) pos += n;
  return pos;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Length of the longest StrDecimalLiteral prefix at s[pos] (sign included), 0 when none.
size_t decimal_prefix(std::string_view s, size_t pos) {
  size_t i = pos;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  if (s.substr(i, 8) == "Infinity") return i + 8 - pos;
  size_t int_digits = 0, frac_digits = 0;
  while (i < s.size() && is_digit(s[i])) ++i, ++int_digits;
  if (i < s.size() && s[i] == '.') {
    size_t j = i + 1;
    while (j < s.size() && is_digit(s[j])) ++j, ++frac_digits;
    if (int_digits > 0 || frac_digits > 0) i = j;
  }
  if (int_digits == 0 && frac_digits == 0) return 0;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    size_t j = i + 1;
    if (j < s.size() && (s[j] == '+' || s[j] == '-')) ++j;
    size_t exp_digits = 0;
    while (j < s.size() && is_digit(s[j])) ++j, ++exp_digits;
    if (exp_digits > 0) i = j;
  }
  return i - pos;
}

double decimal_value(std::string_view lit) {
  std::string t(lit);
  size_t inf = t.find("Infinity");
  if (inf != std::string::npos) return t[0] == '-' ? -INFINITY : INFINITY;
  return std::strtod(t.c_str(), nullptr);
}
}  // namespace

std::optional<double> js_parse_int(std::string_view s) {
  size_t i = skip_js_space(s, 0);
  double sign = 1;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) sign = s[i++] == '-' ? -1 : 1;
  size_t start = i;
  double v = 0;
  while (i < s.size() && is_digit(s[i])) v = v * 10 + (s[i++] - '0');
  if (i == start) return std::nullopt;
  return sign * v;
}

std::optional<double> js_parse_float(std::string_view s) {
  size_t i = skip_js_space(s, 0);
  size_t n = decimal_prefix(s, i);
  if (n == 0) return std::nullopt;
  return decimal_value(s.substr(i, n));
}

double js_to_number(std::string_view s) {
  std::string t = js_trim(s);
  if (t.empty()) return 0;
  if (t.size() > 2 && t[0] == '0' &&
      (t[1] == 'x' || t[1] == 'X' || t[1] == 'o' || t[1] == 'O' || t[1] == 'b' || t[1] == 'B')) {
    int base = (t[1] == 'x' || t[1] == 'X') ? 16 : (t[1] == 'o' || t[1] == 'O') ? 8 : 2;
    double v = 0;
    for (size_t i = 2; i < t.size(); ++i) {
      int d = is_digit(t[i])                 ? t[i] - '0'
              : (t[i] >= 'a' && t[i] <= 'f') ? t[i] - 'a' + 10
              : (t[i] >= 'A' && t[i] <= 'F') ? t[i] - 'A' + 10
                                             : 99;
      if (d >= base) return NAN;
      v = v * base + d;
    }
    return v;
  }
  size_t n = decimal_prefix(t, 0);
  if (n != t.size()) return NAN;
  return decimal_value(t);
}

std::string json_quote(std::string_view s, bool ensure_ascii) {
  static const char* hex = "0123456789abcdef";
  auto escape_unit = [&](std::string& out, char32_t u) {
    out += "\\u";
    for (int shift = 12; shift >= 0; shift -= 4) out += hex[(u >> shift) & 0xF];
  };
  std::string out = "\"";
  for (size_t pos = 0; pos < s.size();) {
    char32_t c = decode_one(s, pos);
    switch (c) {
      case '"':
        out += "\\\"";
        continue;
      case '\\':
        out += "\\\\";
        continue;
      case '\b':
        out += "\\b";
        continue;
      case '\f':
        out += "\\f";
        continue;
      case '\n':
        out += "\\n";
        continue;
      case '\r':
        out += "\\r";
        continue;
      case '\t':
        out += "\\t";
        continue;
      default:
        break;
    }
    if (c < 0x20) {
      escape_unit(out, c);
    } else if (ensure_ascii && c >= 0x7F) {
      if (c > 0xFFFF) {
        escape_unit(out, 0xD800 + ((c - 0x10000) >> 10));
        escape_unit(out, 0xDC00 + ((c - 0x10000) & 0x3FF));
      } else {
        escape_unit(out, c);
      }
    } else {
      utf8_append(out, c);
    }
  }
  out += '"';
  return out;
}

}  // namespace troupe::jinja
