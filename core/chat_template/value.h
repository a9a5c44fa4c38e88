// Runtime values of the chat-template interpreter.
//
// The kinds and their conversions mirror the reference renderer (@huggingface/jinja) rather than Python
// Jinja, because its output is the one we must reproduce byte for byte: numbers are doubles tagged
// integer or float, booleans print as "true", `~` stringifies the way JavaScript's String() does, and
// arrays/objects compare by identity. Arrays are immutable once built (shared freely); objects are
// immutable too except namespaces, which `set ns.attr = ...` mutates in place.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace troupe::jinja {

class interpreter;
struct environment;
struct value;

// A failure while evaluating, before the interpreter has attached the template line to it.
struct eval_failure : std::runtime_error {
  explicit eval_failure(const std::string& msg) : std::runtime_error(msg) {}
};

enum class kind : uint8_t {
  undefined,
  null,
  boolean,
  integer,
  floating,
  string,
  array,
  tuple,       // an array written with commas: `a, b` or `(a, b)`
  object,      // a mapping from the context or a `{...}` literal
  kwargs,      // keyword arguments handed to a callable (an object to everything else)
  name_space,  // namespace(): the one mutable kind
  function,
};

// Insertion-ordered string map (JavaScript Map semantics).
struct object_map {
  std::vector<std::pair<std::string, value>> entries;
  std::unordered_map<std::string, size_t> index;

  const value* find(const std::string& key) const;
  void set(const std::string& key, value v);
  size_t size() const { return entries.size(); }
};

using value_list = std::vector<value>;
using env_ptr = std::shared_ptr<environment>;
// args: positional values, then (when any were given) one trailing kwargs value.
using native_fn = std::function<value(interpreter&, value_list& args, const env_ptr& call_env)>;

struct function_value {
  std::string name;
  native_fn fn;
};

struct value {
  kind k = kind::undefined;
  bool b = false;
  double num = 0;
  std::string str;
  std::shared_ptr<const value_list> arr;  // array, tuple
  std::shared_ptr<object_map> obj;        // object, kwargs, name_space
  std::shared_ptr<function_value> fn;

  static value undefined() { return value{}; }
  static value null();
  static value boolean(bool v);
  static value integer(double v);
  static value floating(double v);
  static value string(std::string v);
  static value array(value_list items, kind k = kind::array);
  static value object(std::shared_ptr<object_map> m, kind k = kind::object);
  static value function(std::string name, native_fn fn);

  bool is_undefined() const { return k == kind::undefined; }
  bool is_null() const { return k == kind::null; }
  bool is_string() const { return k == kind::string; }
  bool is_number() const { return k == kind::integer || k == kind::floating; }
  bool is_array() const { return k == kind::array || k == kind::tuple; }
  bool is_object() const { return k == kind::object || k == kind::kwargs; }
  // Attribute containers: objects and namespaces (what `.attr`, selectattr and map look into).
  bool is_container() const { return is_object() || k == kind::name_space; }
  const value_list& items() const { return *arr; }
};

// The reference's type names ("StringValue", ...) so error messages read the same on both sides.
const char* type_name(kind k);

bool truthy(const value& v);
// String(v.value) in the reference: what `~`, `+` and join use.
std::string js_string(const value& v);
// RuntimeValue.toString(): what `{{ }}` prints (floats keep ".0", containers print as JSON).
std::string output_string(const value& v);

struct json_format {
  std::optional<int64_t> indent;
  bool ensure_ascii = false;
  std::optional<std::pair<std::string, std::string>> separators;  // item, key
  bool sort_keys = false;
};
// The reference's toJSON: Python-style separators ", " and ": " by default, non-ASCII kept.
std::string to_json(const value& v, const json_format& fmt, bool undefined_as_null);

bool loose_equals(const value& a, const value& b);   // JavaScript ==
bool strict_equals(const value& a, const value& b);  // JavaScript ===

// JSON.parse + convertToRuntimeValues: integral numbers become integers, and object keys that are
// array indices ("0", "17") move to the front in ascending order, as JavaScript objects order them.
value from_json(const nlohmann::ordered_json& j);

}  // namespace troupe::jinja
