// String and number helpers with JavaScript semantics, on UTF-8 text.
//
// The reference renderer for chat templates (@huggingface/jinja) runs on JavaScript strings (UTF-16) and
// doubles; matching it byte for byte means `length` counts UTF-16 units, `trim` strips Unicode white
// space, numbers print the way Number.prototype.toString does, and so on. Everything here is pure.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace troupe::jinja {

// Decodes UTF-8; an invalid byte decodes as U+FFFD (one byte consumed) so hostile input cannot stall.
std::vector<char32_t> utf8_decode(std::string_view s);
void utf8_append(std::string& out, char32_t cp);
std::string utf8_encode(const std::vector<char32_t>& cps);

// JavaScript's \s: ASCII white space, line terminators and the Unicode space separators.
bool js_is_space(char32_t cp);
// Byte length of the white space character starting at s[pos] (0 when none).
size_t js_space_at(std::string_view s, size_t pos);

std::string js_trim(std::string_view s);        // String.prototype.trim
std::string js_trim_start(std::string_view s);  // trimStart
std::string js_trim_end(std::string_view s);    // trimEnd

// UTF-16 length (String.prototype.length): astral code points count twice.
size_t js_length(std::string_view s);
// String.prototype.at(i) over UTF-16 units; nullopt when out of range. Half a surrogate pair prints as
// U+FFFD, which is what node writes for a lone surrogate.
std::optional<std::string> js_char_at(std::string_view s, int64_t index);

// Case mapping for ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic (the scripts templates touch).
std::string js_upper(std::string_view s);
std::string js_lower(std::string_view s);
// /\b\w/g upper-cased (ASCII word characters), as the reference's title().
std::string js_title(std::string_view s);

// Number.prototype.toString for a double (shortest round-trip digits, exponent outside 1e-7..1e21).
std::string js_number_string(double x);
// parseInt(s, 10) and parseFloat(s); nullopt for NaN.
std::optional<double> js_parse_int(std::string_view s);
std::optional<double> js_parse_float(std::string_view s);
// Number(s) as loose equality uses it (white space trimmed, "" is 0, else NaN unless a full literal).
double js_to_number(std::string_view s);

// JSON.stringify of a string; with ensure_ascii every unit >= 0x7f becomes \uXXXX (lowercase hex).
std::string json_quote(std::string_view s, bool ensure_ascii);

}  // namespace troupe::jinja
