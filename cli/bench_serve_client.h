// The load generator's network side: OpenAI /v1/completions streamed over SSE, or the /v1/ws protocol
// (docs/websocket-protocol.md), on a few io threads with asynchronous Asio/Beast operations, so hundreds
// of concurrent streams cost sockets, not threads. Every chunk is timed with steady_clock in the read
// handler, before it is parsed. Plain TCP (http:// and ws://) only.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cli/bench_serve_dataset.h"
#include "cli/bench_serve_stats.h"

namespace troupe::cli::bench_serve {

enum class backend_kind { openai, ws };

struct server_address {
  std::string host, port;
  std::string base_path;  // "" or "/prefix" (no trailing slash); routes are appended to it
};
// "http://HOST[:PORT][/PATH]" (port 80 by default). Throws troupe::error for anything else.
server_address parse_base_url(const std::string& url);

// Splits a Server-Sent Events byte stream into the payloads of its events' `data:` lines (several data
// lines of one event are joined with "\n"; other fields and comments are skipped; "\r\n" is accepted).
class sse_reader {
 public:
  // The payloads of the events that `bytes` completes, in order.
  std::vector<std::string> feed(std::string_view bytes);

 private:
  std::string line_;  // an incomplete line carried over to the next feed
  std::string data_;  // the data of the event being read
  bool has_data_ = false;
};

struct client_options {
  server_address server;
  backend_kind backend = backend_kind::openai;
  std::string api_key;
  std::string model;  // sent with every request when not empty
  int32_t io_threads = 2;
  int32_t ws_connections = 4;         // sockets the ws backend spreads requests over (each carries many)
  std::chrono::seconds timeout{300};  // longest silence allowed while waiting for a response
  // Longest a request may take from submit to its final event. WebSocket keep-alive pings keep a socket
  // from ever being silent, so without this a lost final frame would hang the run instead of failing it.
  std::chrono::milliseconds request_timeout{600'000};
};

using done_fn = std::function<void(request_outcome)>;

class serve_client {
 public:
  // Starts the io threads; the ws backend connects its sockets here (throws troupe::error on failure).
  explicit serve_client(client_options opt);
  // Closes the sockets and joins the io threads; call once every submitted request has finished.
  ~serve_client();
  serve_client(const serve_client&) = delete;
  serve_client& operator=(const serve_client&) = delete;

  // Sends one request now (ignore_eos, max_tokens = r.output_len, greedy). Thread-safe. `done` runs
  // exactly once, on an io thread; the outcome's times count from this call (start_s is left to the caller).
  // Requests are named r0, r1, ... in submit order (the ws backend's ids; error messages use them for both
  // backends). One still running after request_timeout fails with an error naming it and the backend
  // (a ws request is then cancelled on the server).
  void submit(const sample_request& r, done_fn done);

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

// A blocking GET of base_path + target; the body of a 200, else troupe::error with the status and body.
std::string http_get(const server_address& server, const std::string& target, const std::string& api_key);

}  // namespace troupe::cli::bench_serve
