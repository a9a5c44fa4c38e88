// One HTTP/1.1 connection: read a header (bounded in time and size), check the route and the key before
// reading any body, then answer a plain request, stream a generation as SSE, or hand the socket over to a
// WebSocket session. While a generation runs, a read stays posted on the socket so that a client that goes
// away is noticed (and its request aborted) even when nothing is being written.
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket/rfc6455.hpp>
#include <deque>
#include <optional>
#include <thread>

#include "gateway/api_error.h"
#include "gateway/http_util.h"
#include "gateway/openai_response.h"
#include "gateway/sessions.h"

namespace troupe::gateway {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;

namespace {

constexpr size_t kMaxPipelinedBytes = 64u << 10;  // read ahead while a generation runs, at most

template <class Stream>
class http_session : public std::enable_shared_from_this<http_session<Stream>> {
  static constexpr bool is_tls = std::is_same_v<Stream, tls_stream>;

 public:
  http_session(Stream stream, std::shared_ptr<gateway_state> st)
      : stream_(std::move(stream)), st_(std::move(st)) {
    st_->metrics.http_connections_open.inc();
  }
  ~http_session() {
    st_->metrics.http_connections_open.dec();
    if (gen_active_ && !engine_id_.empty()) abort_engine_request();
  }

  void run() {
    if constexpr (is_tls) {
      lowest().expires_after(st_->opts.header_timeout);
      stream_.async_handshake(net::ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                if (ec) return self->close_now();
                                self->read_header();
                              });
    } else {
      read_header();
    }
  }

  // Engine events, posted onto this connection's io_context.
  void on_event(const request_event& ev);

 private:
  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }

  void read_header() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(st_->opts.max_header_bytes));
    parser_->body_limit(st_->opts.max_body_bytes);
    lowest().expires_after(st_->opts.header_timeout);
    http::async_read_header(
        stream_, buffer_, *parser_,
        [self = this->shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec);
  void on_body(beast::error_code ec);
  void handle();
  void handle_generation(api_kind kind);
  void send_metrics();
  void admin_reload();

  void send(http::status status, std::string body, const char* content_type, bool close = false,
            int retry_after = 0, bool www_authenticate = false);
  void send_json(http::status status, const json& body, bool close = false) {
    send(status, body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json", close);
  }
  void send_error(const api_error& e, bool close = false);
  void after_response(bool close);

  // SSE
  void queue_chunk(std::string data);
  void write_next();
  // Disconnect detection while generating.
  void start_watch();
  void on_watch(beast::error_code ec, size_t n);
  void client_gone();
  void abort_engine_request() {
    if (engine* e = st_->eng.load()) e->abort(engine_id_);
  }

  void close_now() {
    beast::error_code ignored;
    lowest().socket().shutdown(net::ip::tcp::socket::shutdown_both, ignored);
    lowest().close();
  }
  void graceful_close() {
    if constexpr (is_tls) {
      lowest().expires_after(std::chrono::seconds(2));
      stream_.async_shutdown([self = this->shared_from_this()](beast::error_code) { self->close_now(); });
    } else {
      beast::error_code ignored;
      lowest().socket().shutdown(net::ip::tcp::socket::shutdown_send, ignored);
      // Lingering close: a client still sending a body we refused (413, 401) would get a reset, and lose
      // our answer, if we closed with its bytes unread. Drain them for a bounded time first.
      linger_deadline_ = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      linger();
    }
  }
  void linger() {
    lowest().expires_at(linger_deadline_);
    lowest().async_read_some(net::buffer(linger_buf_),
                             [self = this->shared_from_this()](beast::error_code ec, size_t) {
                               if (ec) return self->close_now();
                               self->linger();
                             });
  }

  Stream stream_;
  std::shared_ptr<gateway_state> st_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string route_ = "other";
  bool keep_alive_ = true;
  std::shared_ptr<http::response<http::string_body>> res_;

  // The generation in progress (one per connection: HTTP/1.1 answers in order).
  struct flight_token {
    explicit flight_token(std::shared_ptr<gateway_state> s) : st(std::move(s)) { st->in_flight.fetch_add(1); }
    ~flight_token() { st->in_flight.fetch_sub(1); }
    std::shared_ptr<gateway_state> st;
  };
  std::unique_ptr<flight_token> flight_;
  std::chrono::steady_clock::time_point linger_deadline_;
  char linger_buf_[16384];
  std::unique_ptr<response_builder> builder_;
  std::string engine_id_;
  bool gen_active_ = false, gen_stream_ = false, watching_ = false, gone_ = false;
  // SSE output
  std::shared_ptr<http::response<http::empty_body>> sse_res_;
  std::shared_ptr<http::response_serializer<http::empty_body>> sse_sr_;
  std::deque<std::string> out_;
  std::string current_;
  size_t out_bytes_ = 0;
  bool writing_ = false, final_queued_ = false;
};

template <class Stream>
void http_session<Stream>::on_header(beast::error_code ec) {
  if (ec == http::error::end_of_stream || ec == net::error::eof || ec == net::error::connection_reset) {
    return close_now();
  }
  if (ec == beast::error::timeout) {  // slow headers (or an idle keep-alive connection): the stream is closed
    st_->metrics.count_error("header_timeout");
    return close_now();
  }
  if (ec == http::error::body_limit) {
    route_ = route_name(parser_->get().target());
    return send_error(
        api_error(413, "the request body exceeds " + std::to_string(st_->opts.max_body_bytes) + " bytes",
                  "invalid_request_error", "", "request_too_large"),
        true);
  }
  if (ec == http::error::header_limit) {
    return send_error(
        api_error(431, "the request header is too large", "invalid_request_error", "", "header_too_large"),
        true);
  }
  if (ec) {
    if (ec == net::error::operation_aborted || ec == net::error::bad_descriptor) return close_now();
    return send_error(api_error(400, "malformed HTTP request: " + ec.message()), true);
  }
  auto& req = parser_->get();
  const std::string path = target_path(req.target());
  route_ = route_name(req.target());
  keep_alive_ = req.keep_alive();

  const auto auth = st_->auth();
  if (auth->enabled() && !auth->is_public(path)) {
    std::string key(authenticator::bearer_token(req[http::field::authorization]));
    if (key.empty() && path == "/v1/ws") key = authenticator::query_param(req.target(), "api_key");
    if (!auth->key_valid(key)) {
      st_->metrics.count_error("authentication");
      st_->metrics.count_api_error("authentication_error", "401");
      // The body is not read: close rather than parse it as the next request.
      return send(http::status::unauthorized,
                  api_error(401, "a valid API key is required (Authorization: Bearer <key>)",
                            "authentication_error", "", "invalid_api_key")
                      .body()
                      .dump(),
                  "application/json", true, 0, true);
    }
  }
  if (beast::websocket::is_upgrade(req)) {
    if (path != "/v1/ws") {
      return send_error(
          api_error(404, "no WebSocket endpoint at " + path, "invalid_request_error", "", "not_found"), true);
    }
    st_->metrics.count_request("/v1/ws", 101);
    lowest().expires_never();
    return run_ws_session<Stream>(std::move(stream_), parser_->release(), st_);
  }
  if (!parser_->is_done()) {
    lowest().expires_after(st_->opts.body_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, size_t) { self->on_body(ec); });
    return;
  }
  handle();
}

template <class Stream>
void http_session<Stream>::on_body(beast::error_code ec) {
  if (ec == http::error::body_limit) {
    return send_error(
        api_error(413, "the request body exceeds " + std::to_string(st_->opts.max_body_bytes) + " bytes",
                  "invalid_request_error", "", "request_too_large"),
        true);
  }
  if (ec == beast::error::timeout) {
    st_->metrics.count_error("body_timeout");
    return close_now();
  }
  if (ec) return close_now();
  handle();
}

template <class Stream>
void http_session<Stream>::handle() {
  auto& req = parser_->get();
  const std::string path = target_path(req.target());
  const bool get = req.method() == http::verb::get || req.method() == http::verb::head;
  const bool post = req.method() == http::verb::post;
  try {
    if (route_ == "other") {
      throw api_error(404, "no route for " + path, "invalid_request_error", "", "not_found");
    }
    const bool wants_post =
        route_ == "/v1/completions" || route_ == "/v1/chat/completions" || route_ == "/admin/reload";
    if (wants_post ? !post : !get) {
      throw api_error(405, std::string("use ") + (wants_post ? "POST" : "GET") + " for " + route_,
                      "invalid_request_error", "", "method_not_allowed");
    }
    engine* eng = st_->eng.load();
    if (route_ == "/health") {
      if (eng && !eng->healthy())
        return send_json(http::status::service_unavailable, {{"status", "unhealthy"}});
      return send_json(http::status::ok, {{"status", eng ? "ok" : "loading"}});
    }
    if (route_ == "/ready") {
      const char* why = st_->unavailable_reason();
      if (*why) {
        return send_json(http::status::service_unavailable, {{"status", st_->draining ? "draining"
                                                                        : !eng        ? "loading"
                                                                                      : "unhealthy"},
                                                             {"reason", why}});
      }
      return send_json(http::status::ok, {{"status", "ready"}});
    }
    if (route_ == "/version") return send_json(http::status::ok, {{"version", st_->opts.version}});
    if (route_ == "/admin/reload") return admin_reload();
    if (route_ == "/metrics") return send_metrics();
    if (route_ == "/v1/models") {
      if (!eng) throw api_error(503, "the model is still loading", "service_unavailable", "", "loading");
      const model_info info = eng->info();
      json m = {{"id", st_->model_name()},
                {"object", "model"},
                {"created", 0},
                {"owned_by", "troupe"},
                {"max_model_len", info.max_model_len}};
      return send_json(http::status::ok, {{"object", "list"}, {"data", json::array({m})}});
    }
    if (route_ == "/v1/completions") return handle_generation(api_kind::completion);
    if (route_ == "/v1/chat/completions") return handle_generation(api_kind::chat);
    throw api_error(404, "no route for " + path, "invalid_request_error", "", "not_found");
  } catch (const api_error& e) {
    send_error(e);
  } catch (const std::exception& e) {
    send_error(api_error(500, std::string("internal error: ") + e.what(), "server_error"));
  }
}

template <class Stream>
void http_session<Stream>::send_metrics() {
  if (engine* eng = st_->eng.load()) {
    // Gauges the engine also sets; refreshing them here keeps a scrape current between steps.
    const engine_stats s = eng->stats();
    auto& m = global_engine_metrics();
    m.requests_running.set(s.num_running);
    m.requests_waiting.set(s.num_waiting);
    m.kv_cache_usage.set(s.kv_usage);
  }
  send(http::status::ok, global_metrics().render(), "text/plain; version=0.0.4; charset=utf-8");
}

template <class Stream>
void http_session<Stream>::admin_reload() {
  if (!st_->opts.reload)
    throw api_error(404, "configuration reload is not available", "invalid_request_error", "", "not_found");
  // Without keys every route is open; an unauthenticated endpoint that rebuilds the engine is not.
  if (!st_->auth()->enabled()) {
    throw api_error(403, "the admin API needs api_keys configured", "permission_error", "", "admin_disabled");
  }
  // Reloading may rebuild the model workers (seconds): run it on a thread of its own and answer from the
  // session's io_context once it is done.
  std::weak_ptr<void> pool = st_->io_pool;
  auto self = this->shared_from_this();
  auto ex = stream_.get_executor();
  std::thread([self, pool, ex, fn = st_->opts.reload] {
    const reload_outcome r = fn();
    std::shared_ptr<void> keep = pool.lock();
    if (!keep) return;
    boost::asio::post(ex, [self, r] {
      json body = {
          {"status", r.ok ? "reloaded" : "refused"}, {"changed", r.changed}, {"problems", r.problems}};
      if (!r.ok) {
        std::string msg = "the new configuration was refused, the old one keeps serving:";
        for (const auto& p : r.problems) msg += " " + p + ";";
        body["error"] = {
            {"message", msg}, {"type", "invalid_request_error"}, {"param", nullptr}, {"code", "bad_config"}};
        self->st_->metrics.count_api_error("invalid_request_error", "400");
      }
      self->send_json(r.ok ? http::status::ok : http::status::bad_request, body);
    });
  }).detach();
}

template <class Stream>
void http_session<Stream>::handle_generation(api_kind kind) {
  if (const char* why = st_->unavailable_reason(); *why) {
    throw api_error(503, why, "service_unavailable", "", st_->draining ? "draining" : "unavailable");
  }
  engine* eng = st_->eng.load();
  const json body = parse_json_object(parser_->get().body());
  const request_context ctx = st_->make_context();
  generation_request g =
      kind == api_kind::chat ? parse_chat_request(body, ctx) : parse_completion_request(body, ctx);
  const std::string id = make_request_id(kind == api_kind::chat ? "chatcmpl-" : "cmpl-");
  builder_ = std::make_unique<response_builder>(g, id, ctx.model_name, ctx.tok);
  engine_request er;
  er.id = id;
  er.prompt_ids = std::move(g.prompt_ids);
  er.params = g.params;
  flight_ = std::make_unique<flight_token>(st_);
  const submit_result r =
      eng->submit(std::move(er), make_sink(this->weak_from_this(), st_, lowest().get_executor()));
  if (r.status != submit_status::accepted) {
    flight_.reset();
    builder_.reset();
    throw submit_error(r, st_->opts.retry_after_s);
  }
  engine_id_ = id;
  gen_active_ = true;
  gen_stream_ = g.stream;
  lowest().expires_never();
  if (gen_stream_) {
    st_->metrics.count_request(route_, 200);
    sse_res_ = std::make_shared<http::response<http::empty_body>>(http::status::ok, 11);
    sse_res_->set(http::field::server, "troupe");
    sse_res_->set(http::field::content_type, "text/event-stream");
    sse_res_->set(http::field::cache_control, "no-cache");
    sse_res_->keep_alive(keep_alive_);
    sse_res_->chunked(true);
    sse_sr_ = std::make_shared<http::response_serializer<http::empty_body>>(*sse_res_);
    writing_ = true;
    http::async_write_header(stream_, *sse_sr_,
                             [self = this->shared_from_this()](beast::error_code ec, size_t) {
                               self->writing_ = false;
                               if (ec) return self->client_gone();
                               self->write_next();
                             });
  }
  start_watch();
}

template <class Stream>
void http_session<Stream>::on_event(const request_event& ev) {
  if (!gen_active_ || ev.id != engine_id_ || gone_) return;
  if (ev.error) {
    st_->metrics.count_error("engine");
    api_error e(500, "the engine failed the request: " + *ev.error, "server_error");
    if (!gen_stream_) {
      gen_active_ = false;
      return send_error(e);
    }
    // Inside an SSE stream whose header already said 200: counted with the error's own status.
    st_->metrics.count_api_error(e.type, std::to_string(e.status));
    queue_chunk("data: " + e.body().dump(-1, ' ', false, json::error_handler_t::replace) +
                "\n\ndata: [DONE]\n\n");
    final_queued_ = true;
    return write_next();
  }
  if (!gen_stream_) {
    builder_->accumulate(ev);
    if (ev.finished) {
      gen_active_ = false;
      send_json(http::status::ok, builder_->body(ev.usage));
    }
    return;
  }
  std::string data;
  builder_->stream_event(ev, data);
  if (ev.finished) {
    builder_->stream_end(ev.usage, data);
    final_queued_ = true;
  }
  if (!data.empty()) queue_chunk(std::move(data));
  if (final_queued_) write_next();
}

template <class Stream>
void http_session<Stream>::queue_chunk(std::string data) {
  out_bytes_ += data.size();
  out_.push_back(std::move(data));
  if (out_bytes_ > st_->opts.ws_max_buffered_bytes) {  // the client stopped reading
    st_->metrics.count_error("slow_reader");
    return client_gone();
  }
  write_next();
}

template <class Stream>
void http_session<Stream>::write_next() {
  if (writing_ || gone_) return;
  if (out_.empty()) {
    if (!final_queued_) return;
    final_queued_ = false;
    writing_ = true;
    net::async_write(stream_, http::make_chunk_last(),
                     [self = this->shared_from_this()](beast::error_code ec, size_t) {
                       self->writing_ = false;
                       self->gen_active_ = false;
                       if (ec) return self->client_gone();
                       self->after_response(!self->keep_alive_);
                     });
    return;
  }
  current_ = std::move(out_.front());
  out_.pop_front();
  out_bytes_ -= current_.size();
  writing_ = true;
  net::async_write(stream_, http::make_chunk(net::buffer(current_)),
                   [self = this->shared_from_this()](beast::error_code ec, size_t) {
                     self->writing_ = false;
                     if (ec) return self->client_gone();
                     self->write_next();
                   });
}

template <class Stream>
void http_session<Stream>::start_watch() {
  if (watching_ || gone_ || buffer_.size() >= kMaxPipelinedBytes) return;
  watching_ = true;
  stream_.async_read_some(
      buffer_.prepare(4096),
      [self = this->shared_from_this()](beast::error_code ec, size_t n) { self->on_watch(ec, n); });
}

template <class Stream>
void http_session<Stream>::on_watch(beast::error_code ec, size_t n) {
  watching_ = false;
  if (!ec) buffer_.commit(n);
  if (gen_active_) {
    if (ec) return client_gone();
    return start_watch();  // pipelined bytes: kept for the next request
  }
  // The response went out while the watch was pending; after_response() cancelled it (or bytes came).
  if (ec && ec != net::error::operation_aborted) return close_now();
  if (gone_) return;
  read_header();
}

template <class Stream>
void http_session<Stream>::client_gone() {
  if (gone_) return;
  gone_ = true;
  if (gen_active_) {
    st_->metrics.client_disconnects.inc();
    abort_engine_request();
    gen_active_ = false;
  }
  flight_.reset();
  out_.clear();
  close_now();
}

template <class Stream>
void http_session<Stream>::send(http::status status, std::string body, const char* content_type, bool close,
                                int retry_after, bool www_authenticate) {
  st_->metrics.count_request(route_, static_cast<int>(status));
  res_ = std::make_shared<http::response<http::string_body>>(status, 11);
  res_->set(http::field::server, "troupe");
  res_->set(http::field::content_type, content_type);
  if (retry_after > 0) res_->set(http::field::retry_after, std::to_string(retry_after));
  if (www_authenticate) res_->set(http::field::www_authenticate, "Bearer");
  const bool head = parser_ && parser_->get().method() == http::verb::head;
  res_->body() = std::move(body);
  res_->keep_alive(keep_alive_ && !close);
  res_->prepare_payload();
  if (head) res_->body().clear();
  lowest().expires_after(st_->opts.write_timeout);
  http::async_write(stream_, *res_, [self = this->shared_from_this()](beast::error_code ec, size_t) {
    if (ec) return self->client_gone();
    self->after_response(!self->res_->keep_alive());
  });
}

template <class Stream>
void http_session<Stream>::send_error(const api_error& e, bool close) {
  st_->metrics.count_error(e.code.empty() ? e.type : e.code);
  st_->metrics.count_api_error(e.type, std::to_string(e.status));
  const int retry = (e.status == 429 || e.status == 503) ? st_->opts.retry_after_s : 0;
  send(static_cast<http::status>(e.status), e.body().dump(-1, ' ', false, json::error_handler_t::replace),
       "application/json", close, retry);
}

template <class Stream>
void http_session<Stream>::after_response(bool close) {
  flight_.reset();
  builder_.reset();
  engine_id_.clear();
  gen_active_ = false;
  if (close || gone_) {
    gone_ = true;
    return graceful_close();
  }
  if (watching_) {
    lowest().cancel();  // on_watch continues with the next request
    return;
  }
  read_header();
}

}  // namespace

void run_http_session(net::ip::tcp::socket socket, std::shared_ptr<gateway_state> state) {
  std::make_shared<http_session<plain_stream>>(plain_stream(std::move(socket)), std::move(state))->run();
}

void run_https_session(net::ip::tcp::socket socket, net::ssl::context& tls,
                       std::shared_ptr<gateway_state> state) {
  std::make_shared<http_session<tls_stream>>(tls_stream(plain_stream(std::move(socket)), tls),
                                             std::move(state))
      ->run();
}

}  // namespace troupe::gateway
