// A small flag parser shared by the subcommands: `--name value`, `--name=value` and boolean `--flag`.
// Unknown flags and missing values are errors that name the flag.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace troupe::cli {

class arg_parser {
 public:
  // value_flags take a value; bool_flags do not. Names are given without the leading "--".
  arg_parser(std::string command, std::set<std::string> value_flags, std::set<std::string> bool_flags);

  // Throws troupe::error on an unknown flag, a missing value or a stray positional argument.
  void parse(const std::vector<std::string>& args);

  bool has(const std::string& name) const;
  std::optional<std::string> get(const std::string& name) const;
  std::string get_or(const std::string& name, const std::string& def) const;
  // Numeric getters throw troupe::error naming the flag when the value does not parse.
  std::optional<int64_t> get_int(const std::string& name) const;
  std::optional<double> get_double(const std::string& name) const;
  // "1,2,3" -> {1,2,3}; throws on anything else.
  std::optional<std::vector<int32_t>> get_ids(const std::string& name) const;

 private:
  std::string command_;
  std::set<std::string> value_flags_, bool_flags_;
  std::map<std::string, std::string> values_;
};

std::vector<int32_t> parse_id_list(const std::string& flag, const std::string& text);

}  // namespace troupe::cli
