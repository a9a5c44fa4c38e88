// API-key checks: keys compared in constant time, every route denied unless public.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace troupe::gateway {

// Time depends only on the lengths, never on where the strings first differ.
bool constant_time_equal(std::string_view a, std::string_view b);

class authenticator {
 public:
  authenticator(std::vector<std::string> api_keys, std::vector<std::string> public_routes);

  bool enabled() const { return !keys_.empty(); }
  bool is_public(std::string_view path) const;
  // Every key is compared (no early exit), so timing does not tell which or how much matched.
  bool key_valid(std::string_view key) const;
  // The token of an "Authorization: Bearer <token>" header ("" when it is not one).
  static std::string_view bearer_token(std::string_view authorization);
  // A query parameter's (percent-decoded) value from a request target, "" when absent.
  static std::string query_param(std::string_view target, std::string_view name);

 private:
  std::vector<std::string> keys_;
  std::vector<std::string> public_;
};

}  // namespace troupe::gateway
