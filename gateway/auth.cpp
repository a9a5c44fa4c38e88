#include "gateway/auth.h"

#include <algorithm>
#include <cctype>

namespace troupe::gateway {

bool constant_time_equal(std::string_view a, std::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() != b.size();
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0;
    const unsigned char y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

authenticator::authenticator(std::vector<std::string> api_keys, std::vector<std::string> public_routes)
    : public_(std::move(public_routes)) {
  for (auto& k : api_keys) {
    if (!k.empty()) keys_.push_back(std::move(k));  // an empty key would let an empty header in
  }
}

bool authenticator::is_public(std::string_view path) const {
  return std::find(public_.begin(), public_.end(), path) != public_.end();
}

bool authenticator::key_valid(std::string_view key) const {
  if (keys_.empty()) return true;
  bool ok = false;
  for (const auto& k : keys_) ok |= constant_time_equal(key, k);
  return ok && !key.empty();
}

std::string_view authenticator::bearer_token(std::string_view h) {
  constexpr std::string_view prefix = "Bearer ";
  if (h.size() < prefix.size()) return {};
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(h[i])) !=
        std::tolower(static_cast<unsigned char>(prefix[i]))) {
      return {};
    }
  }
  h.remove_prefix(prefix.size());
  while (!h.empty() && h.front() == ' ') h.remove_prefix(1);
  while (!h.empty() && h.back() == ' ') h.remove_suffix(1);
  return h;
}

std::string authenticator::query_param(std::string_view target, std::string_view name) {
  const size_t q = target.find('?');
  if (q == std::string_view::npos) return "";
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    const size_t eq = pair.find('=');
    if (pair.substr(0, eq) != name || eq == std::string_view::npos) continue;
    std::string out;
    std::string_view v = pair.substr(eq + 1);
    for (size_t i = 0; i < v.size(); ++i) {
      auto hexval = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
      };
      if (v[i] == '%' && i + 2 < v.size() && hexval(v[i + 1]) >= 0 && hexval(v[i + 2]) >= 0) {
        out += static_cast<char>(hexval(v[i + 1]) * 16 + hexval(v[i + 2]));
        i += 2;
      } else if (v[i] == '+') {
        out += ' ';
      } else {
        out += v[i];
      }
    }
    return out;
  }
  return "";
}

}  // namespace troupe::gateway
