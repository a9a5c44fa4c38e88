#include "core/chat_template/value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/chat_template/js_text.h"

namespace troupe::jinja {

const value* object_map::find(const std::string& key) const {
  auto it = index.find(key);
  return it == index.end() ? nullptr : &entries[it->second].second;
}

void object_map::set(const std::string& key, value v) {
  auto it = index.find(key);
  if (it != index.end()) {
    entries[it->second].second = std::move(v);
    return;
  }
  index.emplace(key, entries.size());
  entries.emplace_back(key, std::move(v));
}

value value::null() {
  value v;
  v.k = kind::null;
  return v;
}
value value::boolean(bool b) {
  value v;
  v.k = kind::boolean;
  v.b = b;
  return v;
}
value value::integer(double x) {
  value v;
  v.k = kind::integer;
  v.num = x;
  return v;
}
value value::floating(double x) {
  value v;
  v.k = kind::floating;
  v.num = x;
  return v;
}
value value::string(std::string s) {
  value v;
  v.k = kind::string;
  v.str = std::move(s);
  return v;
}
value value::array(value_list items, kind k) {
  value v;
  v.k = k;
  v.arr = std::make_shared<const value_list>(std::move(items));
  return v;
}
value value::object(std::shared_ptr<object_map> m, kind k) {
  value v;
  v.k = k;
  v.obj = std::move(m);
  return v;
}
value value::function(std::string name, native_fn fn) {
  value v;
  v.k = kind::function;
  v.fn = std::make_shared<function_value>(function_value{std::move(name), std::move(fn)});
  return v;
}

const char* type_name(kind k) {
  switch (k) {
    case kind::undefined:
      return "UndefinedValue";
    case kind::null:
      return "NullValue";
    case kind::boolean:
      return "BooleanValue";
    case kind::integer:
      return "IntegerValue";
    case kind::floating:
      return "FloatValue";
    case kind::string:
      return "StringValue";
    case kind::array:
      return "ArrayValue";
    case kind::tuple:
      return "TupleValue";
    case kind::object:
      return "ObjectValue";
    case kind::kwargs:
      return "KeywordArgumentsValue";
    case kind::name_space:
      return "NamespaceValue";
    case kind::function:
      return "FunctionValue";
  }
  return "?";
}

bool truthy(const value& v) {
  switch (v.k) {
    case kind::undefined:
    case kind::null:
      return false;
    case kind::boolean:
      return v.b;
    case kind::integer:
    case kind::floating:
      return v.num != 0 && !std::isnan(v.num);
    case kind::string:
      return !v.str.empty();
    case kind::array:
    case kind::tuple:
      return !v.arr->empty();
    case kind::object:
    case kind::kwargs:
      return v.obj->size() > 0;
    case kind::name_space:
    case kind::function:
      return true;
  }
  return false;
}

std::string js_string(const value& v) {
  switch (v.k) {
    case kind::undefined:
      return "undefined";
    case kind::null:
      return "null";
    case kind::boolean:
      return v.b ? "true" : "false";
    case kind::integer:
    case kind::floating:
      return js_number_string(v.num);
    case kind::string:
      return v.str;
    case kind::array:
    case kind::tuple: {
      std::string out;
      for (size_t i = 0; i < v.arr->size(); ++i) {
        if (i) out += ',';
        out += output_string((*v.arr)[i]);
      }
      return out;
    }
    case kind::object:
    case kind::kwargs:
    case kind::name_space:
      return "[object Map]";
    case kind::function:
      return "function";
  }
  return "";
}

std::string output_string(const value& v) {
  switch (v.k) {
    case kind::floating: {
      if (v.num == 0 && std::signbit(v.num)) return "-0.0";
      if (std::isfinite(v.num) && std::trunc(v.num) == v.num && std::fabs(v.num) < 1e21) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.1f", v.num);
        return buf;
      }
      return js_number_string(v.num);
    }
    case kind::array:
    case kind::tuple:
    case kind::object:
    case kind::kwargs:
    case kind::name_space:
      return to_json(v, json_format{}, false);
    default:
      return js_string(v);
  }
}

namespace {
constexpr int kMaxJsonDepth = 256;

// An approximation of String.prototype.localeCompare for sort_keys: letters compare case-insensitively,
// lower case first on a tie.
bool locale_less(const std::string& a, const std::string& b) {
  std::string la = js_lower(a), lb = js_lower(b);
  if (la != lb) return la < lb;
  return a > b;
}

void append_json(std::string& out, const value& v, const json_format& fmt, bool undefined_as_null,
                 int depth) {
  if (depth > kMaxJsonDepth) throw eval_failure("value nested too deeply to convert to JSON");
  std::string item_sep = ", ", key_sep = ": ";
  bool indenting = fmt.indent && *fmt.indent != 0;
  if (fmt.separators) {
    item_sep = fmt.separators->first;
    key_sep = fmt.separators->second;
  } else if (indenting) {
    item_sep = ",";
  }
  switch (v.k) {
    case kind::null:
      out += "null";
      return;
    case kind::undefined:
      out += undefined_as_null ? "null" : "undefined";
      return;
    case kind::integer:
    case kind::floating:
      out += std::isfinite(v.num) ? js_number_string(v.num) : "null";
      return;
    case kind::boolean:
      out += v.b ? "true" : "false";
      return;
    case kind::string:
      out += json_quote(v.str, fmt.ensure_ascii);
      return;
    // The reference's toJSON knows only plain arrays and objects: tuples and keyword arguments are refused.
    case kind::function:
    case kind::tuple:
    case kind::kwargs:
      throw eval_failure(std::string("Cannot convert to JSON: ") + type_name(v.k));
    default:
      break;
  }
  if (indenting && *fmt.indent < 0) throw eval_failure("Invalid count value: " + std::to_string(*fmt.indent));
  std::string unit = indenting ? std::string(static_cast<size_t>(*fmt.indent), ' ') : "";
  std::string base = "\n", child;
  for (int i = 0; i < depth; ++i) base += unit;
  child = base + unit;
  if (v.is_array()) {
    if (v.arr->empty()) {
      out += "[]";
      return;
    }
    out += '[';
    for (size_t i = 0; i < v.arr->size(); ++i) {
      if (i) out += item_sep;
      if (indenting) out += child;
      append_json(out, (*v.arr)[i], fmt, undefined_as_null, depth + 1);
    }
    if (indenting) out += base;
    out += ']';
    return;
  }
  std::vector<const std::pair<std::string, value>*> entries;
  for (const auto& e : v.obj->entries) entries.push_back(&e);
  if (fmt.sort_keys) {
    std::stable_sort(entries.begin(), entries.end(),
                     [](const auto* a, const auto* b) { return locale_less(a->first, b->first); });
  }
  out += '{';
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i) out += item_sep;
    if (indenting) out += child;
    out += json_quote(entries[i]->first, fmt.ensure_ascii);
    out += key_sep;
    append_json(out, entries[i]->second, fmt, undefined_as_null, depth + 1);
  }
  if (indenting && !entries.empty()) out += base;
  out += '}';
}

enum class js_type { undefined, null, boolean, number, string, object };

js_type js_type_of(const value& v) {
  switch (v.k) {
    case kind::undefined:
      return js_type::undefined;
    case kind::null:
      return js_type::null;
    case kind::boolean:
      return js_type::boolean;
    case kind::integer:
    case kind::floating:
      return js_type::number;
    case kind::string:
      return js_type::string;
    default:
      return js_type::object;
  }
}

bool same_object(const value& a, const value& b) {
  if (a.is_array() && b.is_array()) return a.arr == b.arr;
  if (a.k == kind::function || b.k == kind::function) return a.fn == b.fn;
  return a.obj && a.obj == b.obj;
}

bool is_array_index(const std::string& key) {
  if (key.empty() || key.size() > 10 || (key.size() > 1 && key[0] == '0')) return false;
  for (char c : key) {
    if (c < '0' || c > '9') return false;
  }
  return std::stoull(key) <= 4294967294ULL;
}
}  // namespace

std::string to_json(const value& v, const json_format& fmt, bool undefined_as_null) {
  std::string out;
  append_json(out, v, fmt, undefined_as_null, 0);
  return out;
}

bool strict_equals(const value& a, const value& b) {
  js_type ta = js_type_of(a), tb = js_type_of(b);
  if (ta != tb) return false;
  switch (ta) {
    case js_type::undefined:
    case js_type::null:
      return true;
    case js_type::boolean:
      return a.b == b.b;
    case js_type::number:
      return a.num == b.num;
    case js_type::string:
      return a.str == b.str;
    case js_type::object:
      return same_object(a, b);
  }
  return false;
}

bool loose_equals(const value& a, const value& b) {
  js_type ta = js_type_of(a), tb = js_type_of(b);
  if (ta == tb) return strict_equals(a, b);
  bool a_nullish = ta == js_type::undefined || ta == js_type::null;
  bool b_nullish = tb == js_type::undefined || tb == js_type::null;
  if (a_nullish || b_nullish) return a_nullish && b_nullish;
  if (ta == js_type::boolean) return loose_equals(value::integer(a.b ? 1 : 0), b);
  if (tb == js_type::boolean) return loose_equals(a, value::integer(b.b ? 1 : 0));
  if (ta == js_type::number && tb == js_type::string) return a.num == js_to_number(b.str);
  if (ta == js_type::string && tb == js_type::number) return js_to_number(a.str) == b.num;
  if (ta == js_type::object) return loose_equals(value::string(js_string(a)), b);
  if (tb == js_type::object) return loose_equals(a, value::string(js_string(b)));
  return false;
}

value from_json(const nlohmann::ordered_json& j) {
  using t = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case t::null:
      return value::null();
    case t::boolean:
      return value::boolean(j.get<bool>());
    case t::number_integer:
      return value::integer(static_cast<double>(j.get<int64_t>()));
    case t::number_unsigned:
      return value::integer(static_cast<double>(j.get<uint64_t>()));
    case t::number_float: {
      double x = j.get<double>();
      return std::isfinite(x) && std::trunc(x) == x ? value::integer(x) : value::floating(x);
    }
    case t::string:
      return value::string(j.get<std::string>());
    case t::array: {
      value_list items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e));
      return value::array(std::move(items));
    }
    case t::object: {
      auto m = std::make_shared<object_map>();
      std::vector<std::pair<unsigned long long, std::string>> index_keys;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (is_array_index(it.key())) index_keys.emplace_back(std::stoull(it.key()), it.key());
      }
      std::sort(index_keys.begin(), index_keys.end());
      for (const auto& entry : index_keys) m->set(entry.second, from_json(j.at(entry.second)));
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!is_array_index(it.key())) m->set(it.key(), from_json(it.value()));
      }
      return value::object(std::move(m));
    }
    default:
      return value::undefined();  // binary and discarded values do not occur in parsed JSON
  }
}

}  // namespace troupe::jinja
