// An error answered to a client: HTTP status plus OpenAI's error object
// {"error": {"message", "type", "param", "code"}}. Thrown by request parsing, caught by the sessions.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace troupe::gateway {

using json =
    nlohmann::ordered_json;  // keeps key order: responses read naturally, templates see tools as sent

class api_error : public std::runtime_error {
 public:
  api_error(int status, std::string message, std::string type = "invalid_request_error",
            std::string param = "", std::string code = "")
      : std::runtime_error(message),
        status(status),
        type(std::move(type)),
        param(std::move(param)),
        code(std::move(code)) {}

  int status;
  std::string type;
  std::string param;  // "" -> null
  std::string code;   // "" -> null

  json body() const {
    json e = json::object();
    e["message"] = what();
    e["type"] = type;
    e["param"] = param.empty() ? json(nullptr) : json(param);
    e["code"] = code.empty() ? json(nullptr) : json(code);
    return json{{"error", std::move(e)}};
  }
};

inline api_error bad_request(std::string message, std::string param = "") {
  return api_error(400, std::move(message), "invalid_request_error", std::move(param));
}

}  // namespace troupe::gateway
