// The gateway's own Prometheus metrics (HTTP requests by route and status, errors by type, open
// connections), registered in troupe::global_metrics() next to the engine's. Every label value comes from
// a fixed set in the gateway's code (routes, statuses, error types and codes), never from a client.
#pragma once

#include <string>

#include "core/metrics.h"

namespace troupe::gateway {

struct gateway_metrics {
  metrics::family<metrics::counter>& http_requests;  // troupe_http_requests_total{route,status}
  metrics::family<metrics::counter>& errors;         // troupe_request_errors_total{type}
  metrics::family<metrics::counter>& api_errors;     // troupe_api_errors_total{type,code}
  metrics::gauge& websockets_open;                   // troupe_websocket_connections
  metrics::gauge& http_connections_open;             // troupe_http_connections
  metrics::counter& client_disconnects;              // troupe_client_disconnects_total
  metrics::counter& websocket_messages;              // troupe_websocket_messages_received_total

  void count_request(const std::string& route, int status) {
    http_requests.with({route, std::to_string(status)}).inc();
  }
  // A refusal or failure by cause (also transport ones that answer nothing: timeouts, slow readers).
  void count_error(const std::string& type) { errors.with({type}).inc(); }
  // An error answered to a client: its OpenAI error type ("invalid_request_error", "server_error", ...)
  // and the HTTP status ("400") or, on a WebSocket, the error frame's code ("invalid_json") or close code.
  void count_api_error(const std::string& type, const std::string& code) {
    api_errors.with({type, code}).inc();
  }
};

gateway_metrics& global_gateway_metrics();

}  // namespace troupe::gateway
