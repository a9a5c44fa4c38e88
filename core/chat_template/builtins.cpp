#include "core/chat_template/builtins.h"

#include <algorithm>
#include <cmath>

#include "core/chat_template/interpreter.h"
#include "core/chat_template/js_text.h"

namespace troupe::jinja {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw eval_failure(msg); }

// Splits a trailing kwargs value off a call's arguments.
std::shared_ptr<object_map> take_kwargs(value_list& args) {
  if (!args.empty() && args.back().k == kind::kwargs) {
    auto kw = args.back().obj;
    args.pop_back();
    return kw;
  }
  return std::make_shared<object_map>();
}

const value* arg_or_kw(const value_list& args, size_t i, const object_map& kw, const char* name) {
  if (i < args.size()) return &args[i];
  return kw.find(name);
}

bool starts_or_ends(const std::string& s, const value& pattern, bool at_start, const char* fn) {
  auto test = [&](const std::string& p) {
    if (p.size() > s.size()) return false;
    return at_start ? s.compare(0, p.size(), p) == 0 : s.compare(s.size() - p.size(), p.size(), p) == 0;
  };
  if (pattern.is_string()) return test(pattern.str);
  if (pattern.is_array()) {
    for (const auto& item : pattern.items()) {
      if (!item.is_string()) fail(std::string(fn) + "() tuple elements must be strings");
      if (test(item.str)) return true;
    }
    return false;
  }
  fail(std::string(fn) + "() argument must be a string or tuple of strings");
}

value split_string(const std::string& s, value_list& args) {
  value sep = args.size() > 0 ? args[0] : value::null();
  value maxsplit = args.size() > 1 ? args[1] : value::integer(-1);
  if (!sep.is_string() && !sep.is_null()) fail("sep argument must be a string or null");
  if (maxsplit.k != kind::integer) fail("maxsplit argument must be a number");
  int64_t max = static_cast<int64_t>(maxsplit.num);
  value_list parts;
  if (sep.is_null()) {
    // Runs of white space separate; with maxsplit the rest (trailing space included) is the last part.
    std::string text = js_trim_start(s);
    size_t pos = 0;
    while (pos < text.size()) {
      while (size_t n = js_space_at(text, pos)) pos += n;
      if (pos >= text.size()) break;
      size_t start = pos;
      while (pos < text.size() && !js_space_at(text, pos)) ++pos;
      if (max != -1 && static_cast<int64_t>(parts.size()) >= max) {
        parts.push_back(value::string(text.substr(start)));
        break;
      }
      parts.push_back(value::string(text.substr(start, pos - start)));
    }
    return value::array(std::move(parts));
  }
  if (sep.str.empty()) fail("empty separator");
  std::vector<std::string> pieces;
  size_t start = 0;
  while (true) {
    size_t at = s.find(sep.str, start);
    if (at == std::string::npos) break;
    pieces.push_back(s.substr(start, at - start));
    start = at + sep.str.size();
  }
  pieces.push_back(s.substr(start));
  if (max != -1 && static_cast<int64_t>(pieces.size()) > max) {
    std::string rest;
    for (size_t i = static_cast<size_t>(std::max<int64_t>(max, 0)); i < pieces.size(); ++i) {
      if (i > static_cast<size_t>(std::max<int64_t>(max, 0))) rest += sep.str;
      rest += pieces[i];
    }
    pieces.resize(static_cast<size_t>(std::max<int64_t>(max, 0)));
    pieces.push_back(rest);
  }
  for (auto& p : pieces) parts.push_back(value::string(std::move(p)));
  return value::array(std::move(parts));
}

value replace_method(const std::string& s, value_list& args) {
  if (args.size() < 2) fail("replace() requires at least two arguments");
  if (!args[0].is_string() || !args[1].is_string()) fail("replace() arguments must be strings");
  value count = value::null();
  if (args.size() > 2) {
    if (args[2].k == kind::kwargs) {
      const value* c = args[2].obj->find("count");
      count = c ? *c : value::null();
    } else {
      count = args[2];
    }
  }
  if (count.k != kind::integer && !count.is_null()) fail("replace() count argument must be a number or null");
  int64_t n = count.is_null() ? -1 : static_cast<int64_t>(count.num);
  return value::string(replace_all(s, args[0].str, args[1].str, n));
}

value method(const value& self, const char* name, native_fn fn) {
  (void)self;
  return value::function(name, std::move(fn));
}

}  // namespace

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  if (count == 0) return s;
  int64_t remaining = count < 0 ? INT64_MAX : count;
  std::string out;
  if (from.empty()) {
    // Matches at every code point boundary, the start and the end included.
    auto cps = utf8_decode(s);
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (remaining > 0) {
        out += to;
        --remaining;
      }
      if (i < cps.size()) utf8_append(out, cps[i]);
    }
    return out;
  }
  size_t start = 0;
  while (remaining > 0) {
    size_t at = s.find(from, start);
    if (at == std::string::npos) break;
    out.append(s, start, at - start);
    out += to;
    start = at + from.size();
    --remaining;
  }
  out.append(s, start, std::string::npos);
  return out;
}

value string_member(const value& sv, const std::string& name) {
  const std::string s = sv.str;
  if (name == "length") return value::integer(static_cast<double>(js_length(s)));
  if (name == "upper")
    return method(sv, "upper",
                  [s](interpreter&, value_list&, const env_ptr&) { return value::string(js_upper(s)); });
  if (name == "lower")
    return method(sv, "lower",
                  [s](interpreter&, value_list&, const env_ptr&) { return value::string(js_lower(s)); });
  if (name == "strip")
    return method(sv, "strip",
                  [s](interpreter&, value_list&, const env_ptr&) { return value::string(js_trim(s)); });
  if (name == "lstrip")
    return method(sv, "lstrip",
                  [s](interpreter&, value_list&, const env_ptr&) { return value::string(js_trim_start(s)); });
  if (name == "rstrip")
    return method(sv, "rstrip",
                  [s](interpreter&, value_list&, const env_ptr&) { return value::string(js_trim_end(s)); });
  if (name == "title")
    return method(sv, "title",
                  [s](interpreter&, value_list&, const env_ptr&) { return value::string(js_title(s)); });
  if (name == "capitalize") {
    return method(sv, "capitalize", [s](interpreter&, value_list&, const env_ptr&) {
      auto cps = utf8_decode(s);
      if (cps.empty()) return value::string("");
      std::string first;
      utf8_append(first, cps[0]);
      return value::string(js_upper(first) + s.substr(first.size()));
    });
  }
  if (name == "startswith" || name == "endswith") {
    bool at_start = name == "startswith";
    return method(sv, at_start ? "startswith" : "endswith",
                  [s, at_start](interpreter&, value_list& args, const env_ptr&) {
                    const char* fn = at_start ? "startswith" : "endswith";
                    if (args.empty()) fail(std::string(fn) + "() requires at least one argument");
                    return value::boolean(starts_or_ends(s, args[0], at_start, fn));
                  });
  }
  if (name == "split")
    return method(sv, "split",
                  [s](interpreter&, value_list& args, const env_ptr&) { return split_string(s, args); });
  if (name == "replace")
    return method(sv, "replace",
                  [s](interpreter&, value_list& args, const env_ptr&) { return replace_method(s, args); });
  return value::undefined();
}

value object_items(const value& obj) {
  value_list items;
  for (const auto& [k, v] : obj.obj->entries) items.push_back(value::array({value::string(k), v}));
  return value::array(std::move(items));
}

value object_member(const value& obj, const std::string& name) {
  auto m = obj.obj;
  if (name == "get") {
    return value::function("get", [m](interpreter&, value_list& args, const env_ptr&) {
      if (args.empty() || !args[0].is_string()) {
        fail(std::string("Object key must be a string: got ") +
             type_name(args.empty() ? kind::undefined : args[0].k));
      }
      if (const value* v = m->find(args[0].str)) return *v;
      return args.size() > 1 ? args[1] : value::null();
    });
  }
  if (name == "items") {
    return value::function("items",
                           [obj](interpreter&, value_list&, const env_ptr&) { return object_items(obj); });
  }
  if (name == "keys" || name == "values") {
    bool keys = name == "keys";
    return value::function(name, [m, keys](interpreter&, value_list&, const env_ptr&) {
      value_list out;
      for (const auto& [k, v] : m->entries) out.push_back(keys ? value::string(k) : v);
      return value::array(std::move(out));
    });
  }
  if (name == "dictsort") {
    return value::function("dictsort", [m](interpreter&, value_list& args, const env_ptr&) {
      auto kw = take_kwargs(args);
      const value* cs = arg_or_kw(args, 0, *kw, "case_sensitive");
      const value* by = arg_or_kw(args, 1, *kw, "by");
      const value* rev = arg_or_kw(args, 2, *kw, "reverse");
      bool case_sensitive = false, reverse = false;
      std::string by_name = "key";
      if (cs) {
        if (cs->k != kind::boolean) fail("case_sensitive must be a boolean");
        case_sensitive = cs->b;
      }
      if (by) {
        if (!by->is_string()) fail("by must be a string");
        if (by->str != "key" && by->str != "value") fail("by must be either 'key' or 'value'");
        by_name = by->str;
      }
      if (rev) {
        if (rev->k != kind::boolean) fail("reverse must be a boolean");
        reverse = rev->b;
      }
      std::vector<std::pair<value, value>> pairs;
      for (const auto& [k, v] : m->entries) pairs.emplace_back(value::string(k), v);
      std::stable_sort(pairs.begin(), pairs.end(), [&](const auto& a, const auto& b) {
        int c = by_name == "key" ? compare_values(a.first, b.first, case_sensitive)
                                 : compare_values(a.second, b.second, case_sensitive);
        return reverse ? c > 0 : c < 0;
      });
      value_list out;
      for (auto& [k, v] : pairs) out.push_back(value::array({k, v}));
      return value::array(std::move(out));
    });
  }
  return value::undefined();
}

bool has_test(const std::string& name) {
  static const char* names[] = {"boolean",  "callable",  "odd",      "even",   "false",
                                "true",     "none",      "string",   "number", "integer",
                                "iterable", "mapping",   "sequence", "lower",  "upper",
                                "defined",  "undefined", "equalto",  "eq"};
  return std::any_of(std::begin(names), std::end(names), [&](const char* n) { return name == n; });
}

bool run_test(const std::string& name, const value& v, const value& arg) {
  if (name == "boolean") return v.k == kind::boolean;
  if (name == "callable") return v.k == kind::function;
  if (name == "odd" || name == "even") {
    if (v.k != kind::integer) fail("cannot " + name + " on " + type_name(v.k));
    bool odd = std::fmod(v.num, 2) != 0;
    return name == "odd" ? odd : !odd;
  }
  if (name == "false") return v.k == kind::boolean && !v.b;
  if (name == "true") return v.k == kind::boolean && v.b;
  if (name == "none") return v.is_null();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.k == kind::integer;
  if (name == "iterable") return v.k == kind::array || v.is_string();  // tuples are not, in the reference
  if (name == "mapping") return v.is_object();
  if (name == "sequence") return v.is_array() || v.is_object() || v.is_string();
  if (name == "lower") return v.is_string() && v.str == js_lower(v.str);
  if (name == "upper") return v.is_string() && v.str == js_upper(v.str);
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "equalto" || name == "eq") return strict_equals(v, arg);
  fail("Unknown test: " + name);
}

int compare_values(const value& a, const value& b, bool case_sensitive) {
  if (a.is_null() && b.is_null()) return 0;
  if (a.is_null() || b.is_null())
    fail(std::string("Cannot compare ") + type_name(a.k) + " with " + type_name(b.k));
  if (a.is_undefined() && b.is_undefined()) return 0;
  if (a.is_undefined() || b.is_undefined()) {
    fail(std::string("Cannot compare ") + type_name(a.k) + " with " + type_name(b.k));
  }
  auto numeric = [](const value& v) { return v.is_number() || v.k == kind::boolean; };
  if (numeric(a) && numeric(b)) {
    double x = a.k == kind::boolean ? (a.b ? 1 : 0) : a.num;
    double y = b.k == kind::boolean ? (b.b ? 1 : 0) : b.num;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.k != b.k)
    fail(std::string("Cannot compare different types: ") + type_name(a.k) + " and " + type_name(b.k));
  if (a.is_string()) {
    std::string x = case_sensitive ? a.str : js_lower(a.str);
    std::string y = case_sensitive ? b.str : js_lower(b.str);
    // JavaScript compares UTF-16 units; UTF-8 byte order agrees except around astral characters.
    return x < y ? -1 : x > y ? 1 : 0;
  }
  fail(std::string("Cannot compare type: ") + type_name(a.k));
}

value attribute_path(const value& item, const std::string& path) {
  value v = item;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (v.is_container()) {
      const value* next = v.obj->find(part);
      v = next ? *next : value::undefined();
    } else if (v.is_array()) {
      auto idx = js_parse_int(part);
      if (!idx || *idx < 0 || *idx >= static_cast<double>(v.items().size())) return value::undefined();
      v = v.items()[static_cast<size_t>(*idx)];
    } else {
      return value::undefined();
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return v;
}

std::string strftime_js(std::time_t now, const std::string& format) {
  static const char* months[] = {"January", "February", "March",     "April",   "May",      "June",
                                 "July",    "August",   "September", "October", "November", "December"};
  std::tm tm{};
  localtime_r(&now, &tm);
  auto pad2 = [](int n) { return (n < 10 ? "0" : "") + std::to_string(n); };
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%' || i + 1 >= format.size()) {
      out += format[i];
      continue;
    }
    char c = format[i + 1];
    switch (c) {
      case 'Y':
        out += std::to_string(tm.tm_year + 1900);
        break;
      case 'm':
        out += pad2(tm.tm_mon + 1);
        break;
      case 'd':
        out += pad2(tm.tm_mday);
        break;
      case 'b':
        out += std::string(months[tm.tm_mon]).substr(0, 3);
        break;
      case 'B':
        out += months[tm.tm_mon];
        break;
      case 'H':
        out += pad2(tm.tm_hour);
        break;
      case 'M':
        out += pad2(tm.tm_min);
        break;
      case '%':
        out += '%';
        break;
      default:
        out += '%';
        continue;  // not a directive: keep '%' and look at c as ordinary text
    }
    ++i;
  }
  return out;
}

void install_globals(std::unordered_map<std::string, value>& g, std::time_t now, int64_t max_range) {
  g["false"] = g["False"] = value::boolean(false);
  g["true"] = g["True"] = value::boolean(true);
  g["none"] = g["None"] = value::null();
  g["raise_exception"] =
      value::function("raise_exception", [](interpreter&, value_list& args, const env_ptr&) -> value {
        fail(args.empty() ? "" : js_string(args[0]));
      });
  g["strftime_now"] = value::function("strftime_now", [now](interpreter&, value_list& args, const env_ptr&) {
    return value::string(strftime_js(now, args.empty() ? "undefined" : js_string(args[0])));
  });
  g["range"] = value::function("range", [max_range](interpreter&, value_list& args, const env_ptr&) {
    take_kwargs(args);
    for (const auto& a : args) {
      if (!a.is_number()) fail("range() arguments must be numbers");
    }
    if (args.empty()) fail("range() expects at least one argument");
    double start = 0, stop = args[0].num, step = 1;
    if (args.size() > 1) {
      start = args[0].num;
      stop = args[1].num;
    }
    if (args.size() > 2) step = args[2].num;
    if (step == 0) fail("range() step must not be zero");
    double count = std::ceil((stop - start) / step);
    if (count > static_cast<double>(max_range)) {
      fail("range() of " + js_number_string(count) + " items exceeds the limit of " +
           std::to_string(max_range));
    }
    value_list out;
    for (double i = start; step > 0 ? i < stop : i > stop; i += step) {
      out.push_back(std::trunc(i) == i ? value::integer(i) : value::floating(i));
    }
    return value::array(std::move(out));
  });
  g["namespace"] = value::function("namespace", [](interpreter& in, value_list& args, const env_ptr&) {
    auto kw = args.empty() || args.back().k != kind::kwargs ? nullptr : args.back().obj;
    if (kw) args.pop_back();
    if (args.size() > 1) fail("namespace expected at most 1 argument, got " + std::to_string(args.size()));
    auto m = std::make_shared<object_map>();
    if (args.size() == 1) {
      const value& src = args[0];
      if (src.is_object()) {
        for (const auto& [k, v] : src.obj->entries) m->set(k, v);
      } else if (src.is_array()) {
        for (const auto& pair : src.items()) {
          value_list kv;
          if (pair.is_array()) {
            kv = pair.items();
          } else if (pair.is_string()) {
            for (char32_t cp : utf8_decode(pair.str)) {
              std::string ch;
              utf8_append(ch, cp);
              kv.push_back(value::string(ch));
            }
          }
          if (kv.size() != 2) fail("namespace expected an object or an iterable of [key, value] pairs");
          if (!kv[0].is_string()) fail("namespace keys must be strings");
          m->set(kv[0].str, kv[1]);
        }
      } else {
        fail(std::string("'") + type_name(src.k) + "' object is not iterable");
      }
    }
    if (kw) {
      for (const auto& [k, v] : kw->entries) m->set(k, v);
    }
    in.track_namespace(m);
    return value::object(m, kind::name_space);
  });
}

}  // namespace troupe::jinja
