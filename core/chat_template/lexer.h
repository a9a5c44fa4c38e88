// Chat-template lexer: the reference renderer's preprocessing (trim_blocks and lstrip_blocks on, one
// trailing newline dropped, transformers' {% generation %} tags removed) and its tokenizer.
//
// @huggingface/jinja applies trim_blocks/lstrip_blocks as regular-expression rewrites of the source before
// tokenizing, not as Jinja2 does while lexing; we do the same rewrites so quirks match byte for byte.
// Each byte keeps the line it came from so errors name the line of the original template.
#pragma once

#include <string>
#include <vector>

namespace troupe::jinja {

enum class token_type {
  text,
  number,
  string,
  identifier,
  equals,
  open_paren,
  close_paren,
  open_statement,    // {%
  close_statement,   // %}
  open_expression,   // {{
  close_expression,  // }}
  open_square,
  close_square,
  open_curly,
  close_curly,
  comma,
  dot,
  colon,
  pipe,
  additive,        // + - ~
  multiplicative,  // * / // %
  power,           // **
  comparison,      // < > <= >= == !=
  unary,           // a sign with no number after it
  comment,
};

struct token {
  token_type type;
  std::string value;
  int line;  // 1-based line in the original template
};

struct source_text {
  std::string text;
  std::vector<int> line;  // [text.size()] original line of each byte
};

// The reference's token type names ("CloseStatement", ...), which its error messages show.
const char* token_type_name(token_type t);

source_text preprocess(const std::string& source);

// Throws troupe::error "chat template line N: ..." on a lexical error.
std::vector<token> tokenize(const std::string& source);

}  // namespace troupe::jinja
