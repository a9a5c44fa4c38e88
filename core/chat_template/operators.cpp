// Member access, slicing and binary operators, with the reference renderer's type rules (e.g. `<` only
// compares numbers, `+` concatenates when either side is a string, lists join with `+`).
#include <cmath>

#include "core/chat_template/builtins.h"
#include "core/chat_template/interpreter.h"
#include "core/chat_template/js_text.h"

namespace troupe::jinja {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw eval_failure(msg); }

// Python-style slicing as the reference's slice() helper does it.
template <typename T>
std::vector<T> slice_items(const std::vector<T>& items, const value& start_v, const value& stop_v,
                           const value& step_v) {
  auto n = static_cast<int64_t>(items.size());
  int64_t step = step_v.is_undefined() ? 1 : static_cast<int64_t>(step_v.num);
  std::vector<T> out;
  if (step >= 0) {
    int64_t start = start_v.is_undefined() ? 0 : static_cast<int64_t>(start_v.num);
    int64_t stop = stop_v.is_undefined() ? n : static_cast<int64_t>(stop_v.num);
    start = start < 0 ? std::max<int64_t>(n + start, 0) : std::min(start, n);
    stop = stop < 0 ? std::max<int64_t>(n + stop, 0) : std::min(stop, n);
    if (step == 0) return out;
    for (int64_t i = start; i < stop; i += step) out.push_back(items[static_cast<size_t>(i)]);
  } else {
    int64_t start = start_v.is_undefined() ? n - 1 : static_cast<int64_t>(start_v.num);
    int64_t stop = stop_v.is_undefined() ? -1 : static_cast<int64_t>(stop_v.num);
    start = start < 0 ? std::max<int64_t>(n + start, -1) : std::min(start, n - 1);
    stop = stop < -1 ? std::max<int64_t>(n + stop, -1) : std::min(stop, n - 1);
    for (int64_t i = start; i > stop; i += step) out.push_back(items[static_cast<size_t>(i)]);
  }
  return out;
}

}  // namespace

value interpreter::eval_slice(const value& object, const node& s, const env_ptr& env) {
  if (!object.is_array() && !object.is_string()) fail("Slice object must be an array or string");
  value parts[3];
  const node* nodes[3] = {s.a.get(), s.b.get(), s.c.get()};
  const char* names[3] = {"start", "stop", "step"};
  for (int i = 0; i < 3; ++i) {
    if (nodes[i]) parts[i] = eval(*nodes[i], env);
    if (parts[i].k != kind::integer && !parts[i].is_undefined()) {
      fail(std::string("Slice ") + names[i] + " must be numeric or undefined");
    }
  }
  if (object.is_array()) return value::array(slice_items(object.items(), parts[0], parts[1], parts[2]));
  return value::string(utf8_encode(slice_items(utf8_decode(object.str), parts[0], parts[1], parts[2])));
}

value interpreter::eval_member(const node& n, const env_ptr& env) {
  value object = eval(*n.a, env);
  value prop;
  if (n.flag) {
    if (n.b->kind == node_kind::slice) return eval_slice(object, *n.b, env);
    prop = eval(*n.b, env);
  } else if (n.b->kind == node_kind::int_lit) {
    prop = value::integer(n.b->number);
  } else {
    prop = value::string(n.b->name);
  }
  if (object.is_container()) {
    if (!prop.is_string())
      fail(std::string("Cannot access property with non-string: got ") + type_name(prop.k));
    if (const value* v = object.obj->find(prop.str)) return *v;
    return object.is_object() ? object_member(object, prop.str) : value::undefined();
  }
  if (object.is_array() || object.is_string()) {
    if (prop.k == kind::integer) {
      auto i = static_cast<int64_t>(prop.num);
      if (object.is_string()) {
        auto ch = js_char_at(object.str, i);
        return ch ? value::string(*ch) : value::undefined();
      }
      auto size = static_cast<int64_t>(object.items().size());
      if (i < 0) i += size;
      return i >= 0 && i < size ? object.items()[static_cast<size_t>(i)] : value::undefined();
    }
    if (prop.is_string()) {
      if (object.is_string()) return string_member(object, prop.str);
      return prop.str == "length" ? value::integer(static_cast<double>(object.items().size()))
                                  : value::undefined();
    }
    fail(std::string("Cannot access property with non-string/non-number: got ") + type_name(prop.k));
  }
  if (!prop.is_string())
    fail(std::string("Cannot access property with non-string: got ") + type_name(prop.k));
  return value::undefined();
}

value interpreter::eval_binary(const node& n, const env_ptr& env) {
  const std::string& op = n.name;
  value left = eval(*n.a, env);
  if (op == "and") return truthy(left) ? eval(*n.b, env) : left;
  if (op == "or") return truthy(left) ? left : eval(*n.b, env);
  value right = eval(*n.b, env);
  if (op == "==") return value::boolean(loose_equals(left, right));
  if (op == "!=") return value::boolean(!loose_equals(left, right));
  if (left.is_undefined() || right.is_undefined()) {
    if (right.is_undefined() && (op == "in" || op == "not in")) return value::boolean(op == "not in");
    fail("Cannot perform operation " + op + " on undefined values");
  }
  if (left.is_null() || right.is_null()) fail("Cannot perform operation on null values");
  auto concat = [&]() {
    std::string s = js_string(left) + js_string(right);
    account(s.size());
    return value::string(std::move(s));
  };
  if (op == "~") return concat();
  auto numeric_like = [](const value& v) { return v.is_number() || v.k == kind::boolean; };
  if (op == "**" && numeric_like(left) && numeric_like(right)) {
    double a = left.k == kind::boolean ? left.b : left.num,
           b = right.k == kind::boolean ? right.b : right.num;
    if (a == 0 && b < 0) fail("0.0 cannot be raised to a negative power");
    double r = std::pow(a, b);
    if (!std::isfinite(r)) fail("Exponentiation result is not a finite real number");
    bool is_float = left.k == kind::floating || right.k == kind::floating || b < 0;
    return is_float ? value::floating(r) : value::integer(r);
  }
  if (left.is_number() && right.is_number()) {
    double a = left.num, b = right.num;
    bool is_float = left.k == kind::floating || right.k == kind::floating;
    auto num = [&](double r) { return is_float ? value::floating(r) : value::integer(r); };
    if (op == "+") return num(a + b);
    if (op == "-") return num(a - b);
    if (op == "*") return num(a * b);
    if (op == "/") return value::floating(a / b);
    if (op == "//") return num(std::floor(a / b));
    if (op == "%") return num(std::fmod(a, b));
    if (op == "<") return value::boolean(a < b);
    if (op == ">") return value::boolean(a > b);
    if (op == ">=") return value::boolean(a >= b);
    if (op == "<=") return value::boolean(a <= b);
  } else if (left.is_array() && right.is_array()) {
    if (op == "+") {
      account_items(left.items().size() + right.items().size());
      value_list items = left.items();
      items.insert(items.end(), right.items().begin(), right.items().end());
      return value::array(std::move(items));
    }
  } else if (right.is_array()) {
    if (op == "in" || op == "not in") {
      bool member = false;
      for (const auto& x : right.items()) member = member || strict_equals(x, left);
      return value::boolean(op == "in" ? member : !member);
    }
  }
  if ((left.is_string() || right.is_string()) && op == "+") return concat();
  if (left.is_string() && right.is_string() && (op == "in" || op == "not in")) {
    bool found = right.str.find(left.str) != std::string::npos;
    return value::boolean(op == "in" ? found : !found);
  }
  if (left.is_string() && right.is_object() && (op == "in" || op == "not in")) {
    bool found = right.obj->find(left.str) != nullptr;
    return value::boolean(op == "in" ? found : !found);
  }
  fail("Unknown operator \"" + op + "\" between " + type_name(left.k) + " and " + type_name(right.k));
}

}  // namespace troupe::jinja
