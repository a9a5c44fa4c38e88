// Filters, dispatched the way @huggingface/jinja dispatches them: first on whether the filter is called
// with arguments, then on the operand's type. A filter the reference lacks for a type is an error there,
// so it is one here too (e.g. `x | default` without parentheses on an undefined x).
#include <algorithm>
#include <cmath>

#include "core/chat_template/builtins.h"
#include "core/chat_template/interpreter.h"
#include "core/chat_template/js_text.h"

namespace troupe::jinja {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw eval_failure(msg); }

// Array.prototype.join on the raw values: null and undefined print as "".
std::string join_piece(const value& v) { return v.is_null() || v.is_undefined() ? "" : js_string(v); }

std::string indent_lines(const std::string& s, const std::string& pad, bool first, bool blank) {
  std::string out;
  size_t start = 0;
  for (size_t i = 0;; ++i) {
    size_t nl = s.find('\n', start);
    std::string line = s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    if (i > 0) out += '\n';
    if ((!first && i == 0) || (!blank && line.empty())) {
      out += line;
    } else {
      out += pad + line;
    }
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return out;
}

const value* positional_or_kw(const value_list& args, size_t i, const object_map& kw, const char* name) {
  if (i < args.size()) return &args[i];
  return kw.find(name);
}

}  // namespace

value interpreter::apply_filter(const value& operand, const node& filter, const env_ptr& env) {
  if (filter.kind == node_kind::identifier) {
    if (filter.name == "safe") return operand;
    if (filter.name == "tojson") {
      std::string s = to_json(operand, json_format{}, true);
      account(s.size());
      return value::string(std::move(s));
    }
    return apply_plain_filter(operand, filter.name);
  }
  if (filter.kind == node_kind::call) {
    if (filter.a->kind != node_kind::identifier) fail("Unknown filter: not an identifier");
    return apply_call_filter(operand, filter, env);
  }
  fail("Unknown filter");
}

value interpreter::apply_plain_filter(const value& v, const std::string& name) {
  if (v.is_array()) {
    const value_list& items = v.items();
    if (name == "list") return v;
    if (name == "first") return items.empty() ? value::undefined() : items.front();
    if (name == "last") return items.empty() ? value::undefined() : items.back();
    if (name == "length") return value::integer(static_cast<double>(items.size()));
    if (name == "reverse") return value::array(value_list(items.rbegin(), items.rend()));
    if (name == "sort") {
      value_list sorted = items;
      std::stable_sort(sorted.begin(), sorted.end(),
                       [](const value& a, const value& b) { return compare_values(a, b, false) < 0; });
      return value::array(std::move(sorted));
    }
    if (name == "join") {
      std::string s;
      for (const auto& x : items) s += join_piece(x);
      account(s.size());
      return value::string(std::move(s));
    }
    if (name == "string") {
      std::string s = to_json(v, json_format{}, false);
      account(s.size());
      return value::string(std::move(s));
    }
    if (name == "unique") {
      value_list out;
      for (const auto& x : items) {
        if (std::none_of(out.begin(), out.end(), [&](const value& y) { return strict_equals(x, y); }))
          out.push_back(x);
      }
      return value::array(std::move(out));
    }
    fail("Unknown ArrayValue filter: " + name);
  }
  if (v.is_string()) {
    if (name == "length" || name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
      value member = string_member(v, name);
      if (member.k != kind::function) return member;
      value_list no_args;
      return member.fn->fn(*this, no_args, nullptr);
    }
    if (name == "trim") return value::string(js_trim(v.str));
    if (name == "indent") return value::string(indent_lines(v.str, "    ", false, false));
    if (name == "join" || name == "string") return v;
    if (name == "int") {
      auto x = js_parse_int(v.str);
      return value::integer(x ? *x : 0);
    }
    if (name == "float") {
      auto x = js_parse_float(v.str);
      return value::floating(x ? *x : 0);
    }
    fail("Unknown StringValue filter: " + name);
  }
  if (v.is_number()) {
    if (name == "abs")
      return v.k == kind::integer ? value::integer(std::fabs(v.num)) : value::floating(std::fabs(v.num));
    if (name == "int") return value::integer(std::floor(v.num));
    if (name == "float") return value::floating(v.num);
    if (name == "string") return value::string(output_string(v));
    fail("Unknown NumericValue filter: " + name);
  }
  if (v.is_object()) {
    if (name == "items") return object_items(v);
    if (name == "length") return value::integer(static_cast<double>(v.obj->size()));
    value member = object_member(v, name);
    if (member.k == kind::function) {
      value_list no_args;
      return member.fn->fn(*this, no_args, nullptr);
    }
    fail("Unknown ObjectValue filter: " + name);
  }
  if (v.k == kind::boolean) {
    if (name == "bool") return v;
    if (name == "int") return value::integer(v.b ? 1 : 0);
    if (name == "float") return value::floating(v.b ? 1 : 0);
    if (name == "string") return value::string(v.b ? "true" : "false");
    fail("Unknown BooleanValue filter: " + name);
  }
  fail("Cannot apply filter \"" + name + "\" to type: " + type_name(v.k));
}

value interpreter::apply_call_filter(const value& v, const node& filter, const env_ptr& env) {
  const std::string& name = filter.a->name;
  if (name == "tojson") {
    auto [args, kw] = eval_args(filter.list, env);
    json_format fmt;
    if (const value* indent = kw->find("indent")) {
      if (indent->k != kind::integer && !indent->is_null()) fail("If set, indent must be a number");
      if (indent->k == kind::integer) fmt.indent = static_cast<int64_t>(indent->num);
    }
    if (const value* ea = kw->find("ensure_ascii")) {
      if (ea->k != kind::boolean) fail("If set, ensure_ascii must be a boolean");
      fmt.ensure_ascii = ea->b;
    }
    if (const value* sk = kw->find("sort_keys")) {
      if (sk->k != kind::boolean) fail("If set, sort_keys must be a boolean");
      fmt.sort_keys = sk->b;
    }
    if (const value* sep = kw->find("separators")) {
      if (sep->is_array()) {
        if (sep->items().size() != 2 || !sep->items()[0].is_string() || !sep->items()[1].is_string()) {
          fail("separators must be a tuple of two strings");
        }
        fmt.separators = std::make_pair(sep->items()[0].str, sep->items()[1].str);
      } else if (!sep->is_null()) {
        fail("If set, separators must be a tuple of two strings");
      }
    }
    std::string s = to_json(v, fmt, true);
    account(s.size());
    return value::string(std::move(s));
  }
  if (name == "join") {
    std::vector<std::string> pieces;
    if (v.is_string()) {
      for (char32_t cp : utf8_decode(v.str)) {
        pieces.emplace_back();
        utf8_append(pieces.back(), cp);
      }
    } else if (v.is_array()) {
      for (const auto& x : v.items()) pieces.push_back(join_piece(x));
    } else {
      fail("Cannot apply filter \"join\" to type: " + std::string(type_name(v.k)));
    }
    auto [args, kw] = eval_args(filter.list, env);
    const value* sep = positional_or_kw(args, 0, *kw, "separator");
    if (sep && !sep->is_string()) fail("separator must be a string");
    std::string s;
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (i && sep) s += sep->str;
      s += pieces[i];
    }
    account(s.size());
    return value::string(std::move(s));
  }
  if (name == "int" || name == "float") {
    bool is_int = name == "int";
    auto [args, kw] = eval_args(filter.list, env);
    const value* d = positional_or_kw(args, 0, *kw, "default");
    value fallback = d ? *d : is_int ? value::integer(0) : value::floating(0);
    if (v.is_string()) {
      auto x = is_int ? js_parse_int(v.str) : js_parse_float(v.str);
      if (!x) return fallback;
      return is_int ? value::integer(*x) : value::floating(*x);
    }
    if (v.is_number()) return v;
    if (v.k == kind::boolean) return is_int ? value::integer(v.b ? 1 : 0) : value::floating(v.b ? 1 : 0);
    fail("Cannot apply filter \"" + name + "\" to type: " + type_name(v.k));
  }
  if (name == "default") {
    auto [args, kw] = eval_args(filter.list, env);
    value fallback = args.empty() ? value::string("") : args[0];
    const value* flag = positional_or_kw(args, 1, *kw, "boolean");
    if (flag && flag->k != kind::boolean) fail("`default` filter flag must be a boolean");
    bool boolean = flag && flag->b;
    if (v.is_undefined() || (boolean && !truthy(v))) return fallback;
    return v;
  }
  if (v.is_array()) {
    if (name == "sort") {
      auto [args, kw] = eval_args(filter.list, env);
      const value* rev = positional_or_kw(args, 0, *kw, "reverse");
      const value* cs = positional_or_kw(args, 1, *kw, "case_sensitive");
      const value* attr = positional_or_kw(args, 2, *kw, "attribute");
      if (rev && rev->k != kind::boolean) fail("reverse must be a boolean");
      if (cs && cs->k != kind::boolean) fail("case_sensitive must be a boolean");
      if (attr && !attr->is_string() && attr->k != kind::integer && !attr->is_null()) {
        fail("attribute must be a string, integer, or null");
      }
      bool reverse = rev && rev->b, case_sensitive = cs && cs->b;
      std::string path = !attr || attr->is_null() ? ""
                         : attr->is_string()      ? attr->str
                                                  : js_number_string(attr->num);
      bool by_attr = attr && !attr->is_null();
      auto key = [&](const value& x) { return by_attr ? attribute_path(x, path) : x; };
      value_list sorted = v.items();
      std::stable_sort(sorted.begin(), sorted.end(), [&](const value& a, const value& b) {
        int c = compare_values(key(a), key(b), case_sensitive);
        return reverse ? c > 0 : c < 0;
      });
      return value::array(std::move(sorted));
    }
    if (name == "selectattr" || name == "rejectattr")
      return filter_by_attribute(v, filter, env, name == "selectattr");
    if (name == "map") {
      auto [args, kw] = eval_args(filter.list, env);
      const value* attr = kw->find("attribute");
      if (!attr) fail("`map` expressions without `attribute` set are not currently supported.");
      if (!attr->is_string()) fail("attribute must be a string");
      const value* fallback = kw->find("default");
      value_list out;
      for (const auto& item : v.items()) {
        if (!item.is_container()) fail("items in map must be an object");
        value x = attribute_path(item, attr->str);
        out.push_back(x.is_undefined() && fallback ? *fallback : x);
      }
      return value::array(std::move(out));
    }
    fail("Unknown ArrayValue filter: " + name);
  }
  if (v.is_string()) {
    if (name == "indent") {
      auto [args, kw] = eval_args(filter.list, env);
      const value* width = positional_or_kw(args, 0, *kw, "width");
      const value* first = positional_or_kw(args, 1, *kw, "first");
      const value* blank = positional_or_kw(args, 2, *kw, "blank");
      if (width && width->k != kind::integer) fail("width must be a number");
      int64_t w = width ? static_cast<int64_t>(width->num) : 4;
      std::string pad(static_cast<size_t>(std::max<int64_t>(w, 0)), ' ');
      std::string s = indent_lines(v.str, pad, first && truthy(*first), blank && truthy(*blank));
      account(s.size());
      return value::string(std::move(s));
    }
    if (name == "replace") {
      auto [args, kw] = eval_args(filter.list, env);
      args.push_back(value::object(kw, kind::kwargs));
      value fn = string_member(v, "replace");
      value out = fn.fn->fn(*this, args, env);
      account(out.str.size());
      return out;
    }
    fail("Unknown StringValue filter: " + name);
  }
  if (v.is_object()) {
    value member = object_member(v, name);
    if (member.k == kind::function) {
      auto [args, kw] = eval_args(filter.list, env);
      if (kw->size() > 0) args.push_back(value::object(kw, kind::kwargs));
      return member.fn->fn(*this, args, env);
    }
    fail("Unknown ObjectValue filter: " + name);
  }
  fail("Cannot apply filter \"" + name + "\" to type: " + type_name(v.k));
}

value interpreter::filter_by_attribute(const value& v, const node& filter, const env_ptr& env, bool select) {
  const std::string& name = filter.a->name;
  for (const auto& item : v.items()) {
    if (!item.is_container()) fail("`" + name + "` can only be applied to array of objects");
  }
  for (const auto& a : filter.list) {
    if (a->kind != node_kind::string_lit) fail("arguments of `" + name + "` must be strings");
  }
  value parts[3];
  for (size_t i = 0; i < filter.list.size() && i < 3; ++i) parts[i] = eval(*filter.list[i], env);
  const std::string attr = parts[0].is_string() ? parts[0].str : "undefined";
  bool has_test_name = parts[1].is_string();
  if (has_test_name && !has_test(parts[1].str)) fail("Unknown test: " + parts[1].str);
  value_list out;
  for (const auto& item : v.items()) {
    const value* a = item.obj->find(attr);
    bool result = a ? (has_test_name ? run_test(parts[1].str, *a, parts[2]) : truthy(*a)) : false;
    if (result == select) out.push_back(item);
  }
  return value::array(std::move(out));
}

}  // namespace troupe::jinja
