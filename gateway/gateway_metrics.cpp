#include "gateway/gateway_metrics.h"

namespace troupe::gateway {

gateway_metrics& global_gateway_metrics() {
  static gateway_metrics* m = [] {
    auto& r = global_metrics();
    global_engine_metrics();  // the engine's names come first in /metrics, whoever asks first
    return new gateway_metrics{
        r.counter_family("troupe_http_requests_total", "HTTP requests answered, by route and status.",
                         {"route", "status"}),
        r.counter_family("troupe_request_errors_total",
                         "Requests refused or failed, by error type (validation, auth, queue_full, ...).",
                         {"type"}),
        r.counter_family(
            "troupe_api_errors_total",
            "Errors answered to clients, by OpenAI error type and HTTP status or WebSocket code.",
            {"type", "code"}),
        r.make_gauge("troupe_websocket_connections", "Open WebSocket connections."),
        r.make_gauge("troupe_http_connections", "Open HTTP connections (WebSockets included)."),
        r.make_counter("troupe_client_disconnects_total", "Requests aborted because the client went away."),
        r.make_counter("troupe_websocket_messages_received_total", "WebSocket messages received."),
    };
  }();
  return *m;
}

}  // namespace troupe::gateway
