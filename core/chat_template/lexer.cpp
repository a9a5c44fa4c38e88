#include "core/chat_template/lexer.h"

#include <cstring>
#include <utility>

#include "core/chat_template/js_text.h"
#include "core/chat_template/template_error.h"

namespace troupe::jinja {

namespace {

void push(source_text& out, const source_text& in, size_t i) {
  out.text += in.text[i];
  out.line.push_back(in.line[i]);
}

// A line starts at 0 and after \n, \r, U+2028 or U+2029 (JavaScript's multiline ^).
bool at_line_start(const std::string& s, size_t i) {
  if (i == 0) return true;
  char p = s[i - 1];
  if (p == '\n' || p == '\r') return true;
  return i >= 3 && s.compare(i - 3, 2, "\xE2\x80") == 0 && (p == '\xA8' || p == '\xA9');
}

// lstrip_blocks: /^[ \t]*({[#%-])/gm -> "$1".
source_text lstrip_blocks(const source_text& in) {
  source_text out;
  const std::string& s = in.text;
  for (size_t i = 0; i < s.size();) {
    if (at_line_start(s, i)) {
      size_t j = i;
      while (j < s.size() && (s[j] == ' ' || s[j] == '\t')) ++j;
      if (j + 1 < s.size() && s[j] == '{' && std::strchr("#%-", s[j + 1]) && s[j + 1] != '\0') {
        i = j;  // drop the indentation before a block tag
      }
    }
    push(out, in, i);
    ++i;
  }
  return out;
}

// trim_blocks: /([#%-]})\n/g -> "$1".
source_text trim_blocks(const source_text& in) {
  source_text out;
  const std::string& s = in.text;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n' && i >= 2 && s[i - 1] == '}' &&
        (s[i - 2] == '#' || s[i - 2] == '%' || s[i - 2] == '-')) {
      continue;
    }
    push(out, in, i);
  }
  return out;
}

size_t skip_space(const std::string& s, size_t i) {
  while (size_t n = js_space_at(s, i)) i += n;
  return i;
}

// transformers' {% generation %} / {% endgeneration %} markers:
// /(\s*){%(-?)\s*(?:end)?generation\s*(-?)%}(\s*)/gs -> (lstrip ? "" : before) + (rstrip ? "" : after).
source_text strip_generation_tags(const source_text& in) {
  source_text out;
  const std::string& s = in.text;
  size_t floor = 0;  // output bytes before this belong to an earlier match or text and stay
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, 2, "{%") == 0) {
      size_t j = i + 2;
      bool lstrip = j < s.size() && s[j] == '-';
      if (lstrip) ++j;
      j = skip_space(s, j);
      if (s.compare(j, 3, "end") == 0 && s.compare(j + 3, 10, "generation") == 0) j += 3;
      if (s.compare(j, 10, "generation") == 0) {
        j = skip_space(s, j + 10);
        bool rstrip = j < s.size() && s[j] == '-';
        if (rstrip) ++j;
        if (s.compare(j, 2, "%}") == 0) {
          j += 2;
          if (lstrip) {
            // Drop the white space run just before the tag (it is already in the output).
            size_t keep = out.text.size();
            while (keep > floor) {
              size_t start = keep - 1;
              while (start > floor && (static_cast<unsigned char>(out.text[start]) & 0xC0) == 0x80) --start;
              if (!js_space_at(out.text, start)) break;
              keep = start;
            }
            out.text.resize(keep);
            out.line.resize(keep);
          }
          size_t after = skip_space(s, j);
          if (!rstrip) {
            for (size_t k = j; k < after; ++k) push(out, in, k);
          }
          i = after;
          floor = out.text.size();
          continue;
        }
      }
    }
    push(out, in, i);
    ++i;
  }
  return out;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_word(char c) { return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }

struct table_entry {
  const char* seq;
  token_type type;
};

// Order matters: longer operators first where they share a prefix.
const table_entry kTable[] = {
    {"{%", token_type::open_statement},
    {"%}", token_type::close_statement},
    {"{{", token_type::open_expression},
    {"}}", token_type::close_expression},
    {"(", token_type::open_paren},
    {")", token_type::close_paren},
    {"{", token_type::open_curly},
    {"}", token_type::close_curly},
    {"[", token_type::open_square},
    {"]", token_type::close_square},
    {",", token_type::comma},
    {".", token_type::dot},
    {":", token_type::colon},
    {"|", token_type::pipe},
    {"<=", token_type::comparison},
    {">=", token_type::comparison},
    {"==", token_type::comparison},
    {"!=", token_type::comparison},
    {"<", token_type::comparison},
    {">", token_type::comparison},
    {"+", token_type::additive},
    {"-", token_type::additive},
    {"~", token_type::additive},
    {"**", token_type::power},
    {"*", token_type::multiplicative},
    {"//", token_type::multiplicative},
    {"/", token_type::multiplicative},
    {"%", token_type::multiplicative},
    {"=", token_type::equals},
};

class lexer {
 public:
  explicit lexer(source_text src) : src_(std::move(src)), s_(src_.text) {}

  std::vector<token> run() {
    while (cur_ < s_.size()) step();
    return std::move(tokens_);
  }

 private:
  source_text src_;
  const std::string& s_;
  size_t cur_ = 0;
  int curly_depth_ = 0;
  std::vector<token> tokens_;

  char at(size_t i) const { return i < s_.size() ? s_[i] : '\0'; }
  int line_at(size_t i) const {
    if (src_.line.empty()) return 1;
    return src_.line[i < src_.line.size() ? i : src_.line.size() - 1];
  }
  [[noreturn]] void fail(const std::string& msg) const { throw_template_error(line_at(cur_), msg); }
  bool starts(const char* seq) const { return s_.compare(cur_, std::strlen(seq), seq) == 0; }
  const token_type* last_type() const { return tokens_.empty() ? nullptr : &tokens_.back().type; }
  void add(token_type type, std::string value, size_t start) {
    tokens_.push_back(token{type, std::move(value), line_at(start)});
  }

  void strip_trailing_whitespace() {
    if (!tokens_.empty() && tokens_.back().type == token_type::text) {
      tokens_.back().value = js_trim_end(tokens_.back().value);
      if (tokens_.back().value.empty()) tokens_.pop_back();
    }
  }
  void skip_leading_whitespace() { cur_ = skip_space(s_, cur_); }

  void append_escape_unit(std::string& out, unsigned unit) {
    // \uD83D\uDE00 spells one astral character; a lone surrogate cannot be UTF-8 and prints U+FFFD.
    if (unit >= 0xD800 && unit <= 0xDBFF && starts("\\u")) {
      std::string hex = s_.substr(cur_ + 2, 4);
      if (hex.size() == 4 && hex.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos) {
        unsigned low = static_cast<unsigned>(std::stoul(hex, nullptr, 16));
        if (low >= 0xDC00 && low <= 0xDFFF) {
          cur_ += 6;
          utf8_append(out, 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00));
          return;
        }
      }
    }
    utf8_append(out, unit);
  }

  // The reference's consumeWhile: backslash escapes are decoded, and running into the end of the input
  // is an error.
  template <typename Pred>
  std::string consume_while(Pred pred) {
    std::string str;
    while (cur_ < s_.size() && pred(s_[cur_])) {
      if (s_[cur_] == '\\') {
        ++cur_;
        if (cur_ >= s_.size()) fail("Unexpected end of input");
        char escaped = s_[cur_++];
        if (escaped == 'x' || escaped == 'u') {
          size_t len = escaped == 'x' ? 2 : 4;
          std::string hex = s_.substr(cur_, len);
          if (hex.size() != len || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
            fail(std::string("Invalid hexadecimal escape sequence: \\") + escaped + hex);
          }
          cur_ += len;
          append_escape_unit(str, static_cast<unsigned>(std::stoul(hex, nullptr, 16)));
          continue;
        }
        switch (escaped) {
          case 'n':
            str += '\n';
            break;
          case 't':
            str += '\t';
            break;
          case 'r':
            str += '\r';
            break;
          case 'b':
            str += '\b';
            break;
          case 'f':
            str += '\f';
            break;
          case 'v':
            str += '\v';
            break;
          case '\'':
            str += '\'';
            break;
          case '"':
            str += '"';
            break;
          case '\\':
            str += '\\';
            break;
          default:
            fail(std::string("Unexpected escaped character: ") + escaped);
        }
        continue;
      }
      str += s_[cur_++];
      if (cur_ >= s_.size()) fail("Unexpected end of input");
    }
    return str;
  }

  void lex_comment() {
    size_t start = cur_;
    cur_ += 2;
    bool strip_before = at(cur_) == '-';
    if (strip_before) ++cur_;
    std::string comment;
    while (at(cur_) != '#' || at(cur_ + 1) != '}') {
      if (cur_ + 2 >= s_.size()) fail("Missing end of comment tag");
      comment += s_[cur_++];
    }
    bool strip_after = !comment.empty() && comment.back() == '-';
    if (strip_after) comment.pop_back();
    if (strip_before) strip_trailing_whitespace();
    add(token_type::comment, comment, start);
    cur_ += 2;
    if (strip_after) skip_leading_whitespace();
  }

  void step() {
    const token_type* last = last_type();
    if (!last || *last == token_type::close_statement || *last == token_type::close_expression ||
        *last == token_type::comment) {
      size_t start = cur_;
      while (cur_ < s_.size() &&
             !(s_[cur_] == '{' && (at(cur_ + 1) == '%' || at(cur_ + 1) == '{' || at(cur_ + 1) == '#'))) {
        ++cur_;
      }
      if (cur_ > start) {
        add(token_type::text, s_.substr(start, cur_ - start), start);
        return;
      }
    }
    if (at(cur_) == '{' && at(cur_ + 1) == '#') return lex_comment();
    if (starts("{%-")) {
      strip_trailing_whitespace();
      add(token_type::open_statement, "{%", cur_);
      cur_ += 3;
      return;
    }
    if (starts("{{-")) {
      strip_trailing_whitespace();
      add(token_type::open_expression, "{{", cur_);
      curly_depth_ = 0;
      cur_ += 3;
      return;
    }
    // White space inside a tag is skipped; running off the end of the input here is an error.
    while (size_t n = js_space_at(s_, cur_)) {
      cur_ += n;
      if (cur_ >= s_.size()) fail("Unexpected end of input");
    }
    if (starts("-%}")) {
      add(token_type::close_statement, "%}", cur_);
      cur_ += 3;
      skip_leading_whitespace();
      return;
    }
    if (starts("-}}")) {
      add(token_type::close_expression, "}}", cur_);
      cur_ += 3;
      skip_leading_whitespace();
      return;
    }
    size_t start = cur_;
    char c = s_[cur_];
    if (c == '-' || c == '+') {
      if (!last_type() || *last_type() == token_type::text) fail(std::string("Unexpected character: ") + c);
      token_type lt = *last_type();
      bool binary = lt == token_type::identifier || lt == token_type::number || lt == token_type::string ||
                    lt == token_type::close_paren || lt == token_type::close_square;
      if (!binary) {
        ++cur_;
        std::string num = consume_while(is_digit);
        if (!num.empty() && at(cur_) == '.' && is_digit(at(cur_ + 1))) {
          ++cur_;
          num += "." + consume_while(is_digit);
        }
        add(num.empty() ? token_type::unary : token_type::number, std::string(1, c) + num, start);
        return;
      }
    }
    for (const auto& entry : kTable) {
      if (entry.type == token_type::close_expression && curly_depth_ > 0) continue;
      if (!starts(entry.seq)) continue;
      add(entry.type, entry.seq, start);
      if (entry.type == token_type::open_expression) curly_depth_ = 0;
      if (entry.type == token_type::open_curly) ++curly_depth_;
      if (entry.type == token_type::close_curly) --curly_depth_;
      cur_ += std::strlen(entry.seq);
      return;
    }
    if (c == '\'' || c == '"') {
      ++cur_;
      std::string str = consume_while([c](char x) { return x != c; });
      add(token_type::string, str, start);
      ++cur_;
      return;
    }
    if (is_digit(c)) {
      std::string num = consume_while(is_digit);
      bool after_dot = last_type() && *last_type() == token_type::dot;
      if (!after_dot && at(cur_) == '.' && is_digit(at(cur_ + 1))) {
        ++cur_;
        num += "." + consume_while(is_digit);
      }
      add(token_type::number, num, start);
      return;
    }
    if (is_word(c)) {
      add(token_type::identifier, consume_while(is_word), start);
      return;
    }
    auto cps = utf8_decode(s_.substr(cur_, 4));
    std::string shown;
    if (!cps.empty()) utf8_append(shown, cps[0]);
    fail("Unexpected character: " + shown);
  }
};

}  // namespace

const char* token_type_name(token_type t) {
  switch (t) {
    case token_type::text:
      return "Text";
    case token_type::number:
      return "NumericLiteral";
    case token_type::string:
      return "StringLiteral";
    case token_type::identifier:
      return "Identifier";
    case token_type::equals:
      return "Equals";
    case token_type::open_paren:
      return "OpenParen";
    case token_type::close_paren:
      return "CloseParen";
    case token_type::open_statement:
      return "OpenStatement";
    case token_type::close_statement:
      return "CloseStatement";
    case token_type::open_expression:
      return "OpenExpression";
    case token_type::close_expression:
      return "CloseExpression";
    case token_type::open_square:
      return "OpenSquareBracket";
    case token_type::close_square:
      return "CloseSquareBracket";
    case token_type::open_curly:
      return "OpenCurlyBracket";
    case token_type::close_curly:
      return "CloseCurlyBracket";
    case token_type::comma:
      return "Comma";
    case token_type::dot:
      return "Dot";
    case token_type::colon:
      return "Colon";
    case token_type::pipe:
      return "Pipe";
    case token_type::additive:
      return "AdditiveBinaryOperator";
    case token_type::multiplicative:
      return "MultiplicativeBinaryOperator";
    case token_type::power:
      return "ExponentiationBinaryOperator";
    case token_type::comparison:
      return "ComparisonBinaryOperator";
    case token_type::unary:
      return "UnaryOperator";
    case token_type::comment:
      return "Comment";
  }
  return "?";
}

source_text preprocess(const std::string& source) {
  source_text in;
  in.text = source;
  in.line.reserve(source.size());
  int line = 1;
  for (char c : source) {
    in.line.push_back(line);
    if (c == '\n') ++line;
  }
  if (!in.text.empty() && in.text.back() == '\n') {
    in.text.pop_back();
    in.line.pop_back();
  }
  return strip_generation_tags(trim_blocks(lstrip_blocks(in)));
}

std::vector<token> tokenize(const std::string& source) { return lexer(preprocess(source)).run(); }

}  // namespace troupe::jinja
