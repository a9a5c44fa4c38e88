// The gateway's own Prometheus metrics (HTTP requests by route and status, errors by type, open
// connections), registered in troupe::global_metrics() next to the engine's.
#pragma once

#include <string>

#include "core/metrics.h"

namespace troupe::gateway {

struct gateway_metrics {
  metrics::family<metrics::counter>& http_requests;  // troupe_http_requests_total{route,status}
  metrics::family<metrics::counter>& errors;         // troupe_request_errors_total{type}
  metrics::gauge& websockets_open;                   // troupe_websocket_connections
  metrics::gauge& http_connections_open;             // troupe_http_connections
  metrics::counter& client_disconnects;              // troupe_client_disconnects_total
  metrics::counter& websocket_messages;              // troupe_websocket_messages_received_total

  void count_request(const std::string& route, int status) {
    http_requests.with({route, std::to_string(status)}).inc();
  }
  void count_error(const std::string& type) { errors.with({type}).inc(); }
};

gateway_metrics& global_gateway_metrics();

}  // namespace troupe::gateway
