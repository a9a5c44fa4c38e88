// Tree-walking evaluator for parsed chat templates, with the reference renderer's scoping: a `for` gets
// one scope for all its iterations, `if` gets none, and a macro body sees the caller's scope.
//
// Sandboxed by construction: the only globals are pure functions (no file, environment or network
// access), and every render is bounded in loop iterations, call depth, output size and bytes built.
#pragma once

#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/chat_template/parser.h"
#include "core/chat_template/value.h"

namespace troupe::jinja {

struct render_limits {
  size_t max_output_bytes = 16u << 20;    // the rendered prompt, and any one string built on the way
  int64_t max_loop_iterations = 1000000;  // for-loop iterations in one render, summed; also caps range()
  int max_call_depth = 64;                // nested macro / caller() calls
  size_t max_work_bytes = 256u << 20;     // bytes of strings built in one render, summed (bounds time)
};

struct environment {
  std::unordered_map<std::string, value> vars;
  env_ptr parent;

  const value* lookup(const std::string& name) const;
};

class interpreter {
 public:
  interpreter(const render_limits& limits, std::time_t now);
  ~interpreter();
  interpreter(const interpreter&) = delete;
  interpreter& operator=(const interpreter&) = delete;

  // context: an object whose entries become top-level variables. Throws troupe::error naming the line.
  std::string run(const program& prog, const value& context);

  // Namespaces can hold themselves; they are emptied when the render ends so cycles do not leak.
  void track_namespace(const std::shared_ptr<object_map>& ns) { namespaces_.push_back(ns); }

 private:
  enum class flow { normal, break_loop, continue_loop };

  render_limits limits_;
  std::time_t now_;
  int64_t iterations_ = 0;
  size_t work_bytes_ = 0;
  int call_depth_ = 0;
  std::vector<std::shared_ptr<object_map>> namespaces_;

  // Accounts for a freshly built string: throws when it or the running total is over its limit.
  void account(size_t bytes);
  void account_items(size_t n);

  flow exec_block(const std::vector<node_ptr>& body, const env_ptr& env, std::string& out);
  flow exec(const node& n, const env_ptr& env, std::string& out);
  void exec_set(const node& n, const env_ptr& env);
  flow exec_for(const node& n, const env_ptr& env, std::string& out);
  void exec_macro(const node& n, const env_ptr& env);
  value exec_call_block(const node& n, const env_ptr& env);
  std::string render_body(const std::vector<node_ptr>& body, const env_ptr& env);

  value eval(const node& n, const env_ptr& env);
  value eval_inner(const node& n, const env_ptr& env);
  value eval_binary(const node& n, const env_ptr& env);
  value eval_unary(const node& n, const env_ptr& env);
  value eval_member(const node& n, const env_ptr& env);
  value eval_slice(const value& object, const node& slice, const env_ptr& env);
  value eval_call(const node& n, const env_ptr& env);
  value eval_test(const node& n, const env_ptr& env);
  value call(const value& fn, value_list& args, const env_ptr& env);
  // Positional values (spreads expanded) and keyword values, in the reference's evaluation order.
  std::pair<value_list, std::shared_ptr<object_map>> eval_args(const std::vector<node_ptr>& args,
                                                               const env_ptr& env);
  void bind_macro_args(const std::string& display_name, const std::vector<node_ptr>& params, bool uses_kwargs,
                       bool uses_varargs, value_list args, const env_ptr& scope);

  // filters.cpp
  value apply_filter(const value& operand, const node& filter, const env_ptr& env);
  value apply_plain_filter(const value& operand, const std::string& name);
  value apply_call_filter(const value& operand, const node& filter, const env_ptr& env);
  value filter_by_attribute(const value& operand, const node& filter, const env_ptr& env, bool select);
};

}  // namespace troupe::jinja
