// The gateway server: HTTP/1.1 (OpenAI-compatible API with SSE, operations endpoints) and WebSocket
// (/v1/ws) on Boost.Beast, optionally over TLS, bridged to a troupe::engine.
//
// Threads: `threads` io_contexts, one thread each; a connection lives on one of them (round robin), so
// its handlers never run concurrently and need no strand. Engine sinks run on engine threads and only
// post the event onto the connection's io_context; neither side ever blocks on the other.
//
//   gateway::server srv(opts, nullptr);   // listening while the model loads: /ready says 503
//   srv.start();
//   srv.set_engine(&eng);                 // now ready
//   ...
//   srv.stop();                           // drain: /ready 503, new work 503, in-flight finish, then close
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gateway/openai_request.h"

namespace troupe {
class engine;
}

namespace troupe::gateway {

// What POST /admin/reload answers: ok with the settings that changed, or the problems (nothing changed).
struct reload_outcome {
  bool ok = false;
  std::vector<std::string> changed;   // settings now in effect that differ from before
  std::vector<std::string> problems;  // why the new configuration was refused
};

struct server_options {
  std::string host = "0.0.0.0";
  uint16_t port = 8000;  // 0: any free port; server::port() tells which
  int threads = 0;       // io_context threads; 0: one per hardware thread

  std::vector<std::string> api_keys;  // empty: no authentication
  // Reachable without a key when keys are configured; exact paths, no query.
  std::vector<std::string> public_routes = {"/health", "/ready", "/metrics"};

  size_t max_body_bytes = 8u << 20;                 // larger bodies: 413
  size_t max_header_bytes = 16u << 10;              // larger headers: 431
  std::chrono::milliseconds header_timeout{10000};  // a complete request header, keep-alive idle included
  std::chrono::milliseconds body_timeout{30000};    // the body, once the header is in
  std::chrono::milliseconds write_timeout{30000};   // non-streamed responses

  std::string tls_cert_file;  // PEM chain; TLS when both are set
  std::string tls_key_file;   // PEM private key

  size_t ws_max_message_bytes = 1u << 20;    // bigger messages: close 1009
  size_t ws_max_buffered_bytes = 4u << 20;   // unsent output per socket above this: the reader is too slow
  std::chrono::seconds ws_idle_timeout{60};  // a ping after half of it, closed when nothing came back

  std::string served_model_name;                   // empty: the engine's info().name
  prompt_renderer chat_renderer;                   // empty: chat requests are refused with a 400
  bool allow_request_chat_template = false;        // accept a "chat_template" sent in a request
  std::chrono::milliseconds drain_timeout{30000};  // stop() waits this long for in-flight requests
  int retry_after_s = 1;                           // Retry-After on 429 and 503
  std::string version = TROUPE_VERSION;            // GET /version
  // POST /admin/reload (an API key is required; the route is refused when no keys are configured):
  // re-reads the configuration. Called on a thread of its own, since it may rebuild the model workers;
  // it must not throw. Empty: the route answers 404.
  std::function<reload_outcome()> reload;
};

struct gateway_state;

class server {
 public:
  // eng may be null while the model loads (readiness 503); it must outlive the server.
  server(server_options opts, engine* eng);
  ~server();  // stop() when still running
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  // Binds, listens and starts the threads; throws troupe::error when the address cannot be bound or the
  // TLS files cannot be read.
  void start();
  // The engine is up: generation routes and /ready answer normally.
  void set_engine(engine* eng);
  // New API keys and public routes, for requests that arrive from now on (configuration reload).
  void set_auth(std::vector<std::string> api_keys, std::vector<std::string> public_routes);
  uint16_t port() const;  // the bound port (useful with port 0)

  // Drains then closes: /ready and new requests answer 503, in-flight requests finish (up to
  // drain_timeout), then every connection closes and the threads are joined. Idempotent.
  void stop();
  // The first half of stop() alone: readiness 503 and new work refused, everything else keeps running.
  void begin_drain();
  int64_t in_flight() const;  // generation requests not yet finished

 private:
  std::shared_ptr<gateway_state> state_;
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace troupe::gateway
