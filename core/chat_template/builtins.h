// Built-in methods, tests and globals of the chat-template language, as @huggingface/jinja defines them
// (e.g. `strip` takes no characters argument there and trims all white space; templates rely on what the
// reference does, not on Python's str.strip).
#pragma once

#include <ctime>
#include <string>
#include <unordered_map>

#include "core/chat_template/value.h"

namespace troupe::jinja {

// `s.name`: a bound method (upper, lower, strip, lstrip, rstrip, title, capitalize, startswith,
// endswith, split, replace) or `length`; undefined for anything else.
value string_member(const value& s, const std::string& name);
// `obj.name` when obj has no such key: get, items, keys, values, dictsort; undefined otherwise.
value object_member(const value& obj, const std::string& name);
// dict.items(): an array of [key, value] arrays.
value object_items(const value& obj);

// `x is name` (and the test functions selectattr/rejectattr use). arg is the second operand of
// equalto/eq. Throws eval_failure for an unknown test.
bool run_test(const std::string& name, const value& operand, const value& arg);
bool has_test(const std::string& name);

// The reference's compareRuntimeValues (used by sort and dictsort): numbers, booleans and strings.
int compare_values(const value& a, const value& b, bool case_sensitive);
// getAttributeValue: "a.b.0" walks objects and array indices; undefined when a step is missing.
value attribute_path(const value& item, const std::string& path);

// The reference's strftime subset: %Y %m %d %b %B %H %M %%, in local time; anything else stays as is.
std::string strftime_js(std::time_t now, const std::string& format);

// The globals every template sees: true/false/none (and title case), namespace, range,
// raise_exception, strftime_now. max_range bounds range() (the loop budget).
void install_globals(std::unordered_map<std::string, value>& globals, std::time_t now, int64_t max_range);

// Python str.replace semantics on code points (count < 0: all).
std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count);

}  // namespace troupe::jinja
