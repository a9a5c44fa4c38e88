// Chat-template syntax tree and parser (the grammar and precedence of @huggingface/jinja's parser).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/chat_template/lexer.h"

namespace troupe::jinja {

enum class node_kind {
  // expressions
  string_lit,  // name = the text (template text is a string literal too)
  int_lit,     // number
  float_lit,   // number
  identifier,  // name
  array_lit,   // list
  tuple_lit,   // list
  object_lit,  // list = key, value, key, value, ...
  member,      // a = object, b = property; flag = computed (`[...]`)
  slice,       // a, b, c = start, stop, step (each may be null)
  call,        // a = callee, list = arguments
  kwarg,       // name = key, a = value (also a parameter default)
  spread,      // *a
  kwspread,    // **a
  unary,       // name = operator ("not", "-", "+"), a
  binary,      // name = operator, a, b
  filter,      // a = operand, b = filter (identifier or call)
  test,        // a = operand, name = test, flag = negated
  select,      // a if b (no else): undefined when b is false
  ternary,     // a = condition, b = if true, c = if false
  // statements
  set,           // a = target, b = value (null: block set, body)
  if_stmt,       // a = test, body, alt
  for_stmt,      // a = loop variable(s), b = iterable, body, alt (the else block)
  macro,         // name, list = parameters, body
  call_block,    // a = call expression, list = caller parameters, body
  filter_block,  // a = filter (identifier or call), body
  break_stmt,
  continue_stmt,
  comment,
};

struct node;
using node_ptr = std::unique_ptr<node>;

struct node {
  node_kind kind;
  int line = 0;  // line in the original template
  std::string name;
  double number = 0;
  bool flag = false;
  node_ptr a, b, c;
  std::vector<node_ptr> list, body, alt;
};

// A parsed template: the top-level statements.
using program = std::vector<node_ptr>;

// Throws troupe::error "chat template line N: ..." on a syntax error. max_depth bounds nesting so a
// hostile template cannot overflow the stack.
program parse(const std::vector<token>& tokens, int max_depth);

}  // namespace troupe::jinja
