#include "cli/args.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace troupe::cli {

arg_parser::arg_parser(std::string command, std::set<std::string> value_flags,
                       std::set<std::string> bool_flags)
    : command_(std::move(command)),
      value_flags_(std::move(value_flags)),
      bool_flags_(std::move(bool_flags)) {}

void arg_parser::parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) {
      throw error("unexpected argument '" + a + "' (flags start with --)");
    }
    std::string name = a.substr(2), value;
    bool has_inline = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_inline = true;
    }
    if (bool_flags_.count(name)) {
      if (has_inline) throw error("flag --" + name + " takes no value");
      values_[name] = "1";
    } else if (value_flags_.count(name)) {
      if (!has_inline) {
        if (i + 1 >= args.size()) throw error("flag --" + name + " needs a value");
        value = args[++i];
      }
      values_[name] = value;
    } else {
      std::string valid;
      for (const auto& f : value_flags_) valid += " --" + f;
      for (const auto& f : bool_flags_) valid += " --" + f;
      throw error("unknown flag --" + name + " for '" + command_ + "'; valid flags:" + valid);
    }
  }
}

bool arg_parser::has(const std::string& name) const { return values_.count(name) > 0; }

std::optional<std::string> arg_parser::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string arg_parser::get_or(const std::string& name, const std::string& def) const {
  auto v = get(name);
  return v ? *v : def;
}

std::optional<int64_t> arg_parser::get_int(const std::string& name) const {
  auto v = get(name);
  if (!v) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v->c_str(), &end, 10);
  if (v->empty() || *end != '\0' || errno != 0) throw error("--" + name + ": '" + *v + "' is not an integer");
  return static_cast<int64_t>(x);
}

std::optional<double> arg_parser::get_double(const std::string& name) const {
  auto v = get(name);
  if (!v) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  double x = std::strtod(v->c_str(), &end);
  if (v->empty() || *end != '\0' || errno != 0 || !std::isfinite(x)) {
    throw error("--" + name + ": '" + *v + "' is not a finite number");
  }
  return x;
}

std::vector<int32_t> parse_id_list(const std::string& flag, const std::string& text) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  if (text.empty()) return ids;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string tok = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    errno = 0;
    char* end = nullptr;
    long long x = std::strtoll(tok.c_str(), &end, 10);
    if (tok.empty() || *end != '\0' || errno != 0 || x < 0 || x > INT32_MAX) {
      throw error("--" + flag + ": '" + tok + "' is not a token id (expected e.g. 1,2,3)");
    }
    ids.push_back(static_cast<int32_t>(x));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return ids;
}

std::optional<std::vector<int32_t>> arg_parser::get_ids(const std::string& name) const {
  auto v = get(name);
  if (!v) return std::nullopt;
  return parse_id_list(name, *v);
}

}  // namespace troupe::cli
