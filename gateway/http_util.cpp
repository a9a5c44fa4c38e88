#include "gateway/http_util.h"

namespace troupe::gateway {

std::string target_path(std::string_view target) { return std::string(target.substr(0, target.find('?'))); }

std::string route_name(std::string_view target) {
  static const char* const routes[] = {"/health",
                                       "/ready",
                                       "/version",
                                       "/metrics",
                                       "/v1/models",
                                       "/v1/completions",
                                       "/v1/chat/completions",
                                       "/v1/ws",
                                       "/admin/reload"};
  const std::string path = target_path(target);
  for (const char* r : routes) {
    if (path == r) return path;
  }
  return "other";
}

api_error submit_error(const submit_result& r, int retry_after_s) {
  switch (r.status) {
    case submit_status::invalid:
      return api_error(400, r.message.empty() ? "the engine refused the request" : r.message);
    case submit_status::queue_full:
      return api_error(429,
                       "the server is at capacity (" + r.message + "); retry after " +
                           std::to_string(retry_after_s) + " s",
                       "rate_limit_error", "", "queue_full");
    case submit_status::unavailable:
      return api_error(503, r.message.empty() ? "the engine is unavailable" : r.message,
                       "service_unavailable", "", "unavailable");
    case submit_status::accepted:
      break;
  }
  return api_error(500, "unexpected submit status", "server_error");
}

}  // namespace troupe::gateway
