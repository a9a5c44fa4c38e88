#include "cli/bench_serve_client.h"

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <cstdio>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <unordered_map>

#include "core/error.h"

namespace troupe::cli::bench_serve {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using steady = std::chrono::steady_clock;

server_address parse_base_url(const std::string& url) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) {
    throw error("--base-url: '" + url + "' must start with http:// (TLS is not supported by bench serve)");
  }
  std::string rest = url.substr(scheme.size());
  server_address a;
  const auto slash = rest.find('/');
  if (slash != std::string::npos) {
    a.base_path = rest.substr(slash);
    rest = rest.substr(0, slash);
    while (!a.base_path.empty() && a.base_path.back() == '/') a.base_path.pop_back();
  }
  const auto colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']', colon) == std::string::npos) {
    a.host = rest.substr(0, colon);
    a.port = rest.substr(colon + 1);
  } else {
    a.host = rest;
    a.port = "80";
  }
  if (a.host.size() > 2 && a.host.front() == '[' && a.host.back() == ']')
    a.host = a.host.substr(1, a.host.size() - 2);
  if (a.host.empty() || a.port.empty() || a.port.find_first_not_of("0123456789") != std::string::npos) {
    throw error("--base-url: '" + url + "' is not http://HOST[:PORT][/PATH]");
  }
  return a;
}

std::vector<std::string> sse_reader::feed(std::string_view bytes) {
  std::vector<std::string> events;
  line_.append(bytes.data(), bytes.size());
  size_t begin = 0;
  for (size_t nl; (nl = line_.find('\n', begin)) != std::string::npos; begin = nl + 1) {
    std::string_view line(line_.data() + begin, nl - begin);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {  // a blank line ends the event
      if (has_data_) events.push_back(std::move(data_));
      data_.clear();
      has_data_ = false;
    } else if (line.rfind("data:", 0) == 0) {
      line.remove_prefix(5);
      if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
      if (has_data_) data_ += '\n';
      data_.append(line.data(), line.size());
      has_data_ = true;
    }
  }
  line_.erase(0, begin);
  return events;
}

namespace {

double ms_between(steady::time_point a, steady::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

json request_json(const sample_request& r, const std::string& model) {
  json j = {{"max_tokens", r.output_len}, {"ignore_eos", true}, {"temperature", 0.0}};
  if (!model.empty()) j["model"] = model;
  return j;
}

// The stream timing and result of one request, shared by both backends.
struct request_state {
  std::string id;       // r0, r1, ... in submit order
  const char* backend;  // "openai" | "ws"
  steady::time_point start, last;
  steady::time_point deadline;       // start + request_timeout: past it the request fails
  steady::time_point last_activity;  // ws: start, then its last frame (http times silence on the stream)
  bool got_output = false;
  int32_t num_chunks = 0;    // chunks with output so far
  int32_t chunk_tokens = 0;  // tokens seen in chunks, for when the server reports no usage
  bool usage_seen = false;
  request_outcome out;
  done_fn done;

  request_state(const sample_request& r, std::string id_, const char* backend_, steady::duration timeout,
                done_fn d)
      : id(std::move(id_)), backend(backend_), done(std::move(d)) {
    start = steady::now();
    last_activity = start;
    deadline = start + timeout;
    out.prompt_tokens = r.prompt_len;
    out.expected_output_tokens = r.output_len;
  }
  bool past_deadline() const { return steady::now() >= deadline; }
  // What a request that ran past its deadline failed with: which one, where, and how far it got.
  std::string deadline_error() const {
    return name() + " timed out: its stream did not end within " + seconds(deadline - start) +
           " s (--request-timeout); " + progress();
  }
  // What a request failed with when nothing came for it for `silence` (--timeout).
  std::string silence_error(steady::duration silence) const {
    return name() + " timed out: nothing came for it for " + seconds(silence) + " s (--timeout); " +
           progress();
  }
  std::string name() const { return "request " + id + " (" + backend + " backend)"; }
  std::string progress() const {
    return "it had received " + std::to_string(num_chunks) + " output chunks (" +
           std::to_string(chunk_tokens) + " of " + std::to_string(out.expected_output_tokens) + " tokens)";
  }
  static std::string seconds(steady::duration d) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", std::chrono::duration<double>(d).count());
    return buf;
  }
  void on_output(steady::time_point t, int32_t tokens) {
    if (!got_output) {
      out.ttft_ms = ms_between(start, t);
      got_output = true;
    } else {
      out.itl_ms.push_back(ms_between(last, t));
    }
    last = t;
    ++num_chunks;
    chunk_tokens += tokens;
  }
  void on_usage(const json& usage) {
    if (!usage.is_object()) return;
    if (auto it = usage.find("completion_tokens"); it != usage.end() && it->is_number_integer()) {
      out.output_tokens = it->get<int32_t>();
      usage_seen = true;
    }
    if (auto it = usage.find("prompt_tokens"); it != usage.end() && it->is_number_integer()) {
      out.prompt_tokens = it->get<int32_t>();
    }
  }
  void finish(steady::time_point t, std::string err) {
    if (!done) return;
    out.latency_ms = ms_between(start, t);
    if (err.empty() && !got_output) err = "the stream ended without output";
    out.success = err.empty();
    out.error = std::move(err);
    if (!usage_seen) out.output_tokens = chunk_tokens;
    auto d = std::move(done);
    done = nullptr;
    d(std::move(out));
  }
};

std::string error_message(const json& j) {
  if (j.is_object() && j.contains("error") && j["error"].is_object()) {
    const auto& e = j["error"];
    std::string m = e.value("message", std::string("error"));
    if (e.contains("code") && e["code"].is_string()) m += " (" + e["code"].get<std::string>() + ")";
    return m;
  }
  return j.dump();
}

}  // namespace

class http_op;
class ws_conn;

struct serve_client::impl {
  client_options opt;
  net::io_context ioc;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::vector<std::thread> threads;
  tcp::resolver::results_type endpoints;
  std::mutex pool_mu;
  std::vector<std::unique_ptr<beast::tcp_stream>> idle;  // keep-alive HTTP connections ready for reuse
  std::vector<std::shared_ptr<ws_conn>> ws;
  std::atomic<uint64_t> next_id{0};  // names requests r0, r1, ... for both backends

  explicit impl(client_options o) : opt(std::move(o)), ioc(std::max(1, opt.io_threads)) {}
  std::unique_ptr<beast::tcp_stream> take_idle() {
    std::lock_guard<std::mutex> lk(pool_mu);
    if (idle.empty()) return nullptr;
    auto s = std::move(idle.back());
    idle.pop_back();
    return s;
  }
  void give_back(std::unique_ptr<beast::tcp_stream> s) {
    std::lock_guard<std::mutex> lk(pool_mu);
    idle.push_back(std::move(s));
  }
};

// One streamed /v1/completions request on its own (possibly reused keep-alive) connection.
class http_op : public std::enable_shared_from_this<http_op> {
 public:
  http_op(serve_client::impl& c, const sample_request& r, std::string id, done_fn done)
      : c_(c), st_(r, std::move(id), "openai", c.opt.request_timeout, std::move(done)) {
    json j = request_json(r, c.opt.model);
    if (r.prompt_ids.empty()) {
      j["prompt"] = r.prompt_text;
    } else {
      j["prompt"] = r.prompt_ids;
    }
    j["stream"] = true;
    j["stream_options"] = {{"include_usage", true}};
    req_ = {http::verb::post, c.opt.server.base_path + "/v1/completions", 11};
    req_.set(http::field::host, c.opt.server.host + ":" + c.opt.server.port);
    req_.set(http::field::content_type, "application/json");
    req_.set(http::field::accept, "text/event-stream");
    if (!c.opt.api_key.empty()) req_.set(http::field::authorization, "Bearer " + c.opt.api_key);
    req_.keep_alive(true);
    req_.body() = j.dump();
    req_.prepare_payload();
  }

  void run() {
    stream_ = c_.take_idle();
    reused_ = stream_ != nullptr;
    if (!reused_) return connect();
    // A kept-alive stream may still have its previous request's timer handler pending on its strand:
    // touch it only from there.
    net::post(stream_->get_executor(), [self = shared_from_this()] { self->write(); });
  }

 private:
  void connect() {
    stream_ = std::make_unique<beast::tcp_stream>(net::make_strand(c_.ioc));
    arm();
    stream_->async_connect(c_.endpoints,
                           [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
                             if (ec) return self->fail("connect", ec);
                             self->stream_->socket().set_option(tcp::no_delay(true), ec);
                             self->write();
                           });
  }

  void write() {
    arm();
    http::async_write(*stream_, req_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->retry_or_fail("write", ec);
      self->read_header();
    });
  }

  void read_header() {
    parser_.emplace();
    parser_->body_limit(boost::none);
    rbuf_.clear();
    arm();
    http::async_read_header(*stream_, rbuf_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (ec) return self->retry_or_fail("read", ec);
                              self->status_ = self->parser_->get().result_int();
                              self->read_body();
                            });
  }

  void read_body() {
    if (parser_->is_done()) return complete(steady::now());
    parser_->get().body().data = chunk_;
    parser_->get().body().size = sizeof(chunk_);
    arm();
    http::async_read_some(*stream_, rbuf_, *parser_,
                          [self = shared_from_this()](beast::error_code ec, size_t) {
                            const auto t = steady::now();
                            if (ec == http::error::need_buffer) ec = {};
                            if (ec) return self->fail("read", ec);
                            const size_t n = sizeof(self->chunk_) - self->parser_->get().body().size;
                            if (self->on_bytes(t, std::string_view(self->chunk_, n))) self->read_body();
                          });
  }

  // Returns whether to keep reading.
  bool on_bytes(steady::time_point t, std::string_view bytes) {
    if (status_ != 200) {
      error_body_.append(bytes.data(), bytes.size());
      return true;
    }
    for (auto& data : sse_.feed(bytes)) {
      if (data == "[DONE]") {
        done_seen_ = true;
        continue;
      }
      json j = json::parse(data, nullptr, false);
      if (j.is_discarded() || !j.is_object()) {
        st_.finish(t, "unparsable SSE event: " + data.substr(0, 200));
        close();
        return false;
      }
      if (j.contains("error")) {
        stream_error_ = error_message(j);
        continue;
      }
      if (auto it = j.find("choices"); it != j.end() && it->is_array() && !it->empty()) st_.on_output(t, 1);
      if (auto it = j.find("usage"); it != j.end()) st_.on_usage(*it);
    }
    return true;
  }

  void complete(steady::time_point t) {
    std::string err;
    if (status_ != 200) {
      json j = json::parse(error_body_, nullptr, false);
      err = "HTTP " + std::to_string(status_) + ": " +
            (j.is_discarded() ? error_body_.substr(0, 200) : error_message(j));
    } else if (!stream_error_.empty()) {
      err = stream_error_;
    } else if (!done_seen_) {
      err = "the stream ended without data: [DONE]";
    }
    if (parser_->keep_alive() && rbuf_.size() == 0) {
      c_.give_back(std::move(stream_));
    } else {
      close();
    }
    st_.finish(t, std::move(err));
  }

  // The silence timeout for the next operation, cut short by the request's deadline (the stream's timer
  // then fails it with beast::error::timeout, which fail() tells apart by the clock).
  void arm() {
    const steady::duration left = st_.deadline - steady::now();
    const steady::duration silence = c_.opt.timeout;
    stream_->expires_after(std::max(steady::duration::zero(), std::min(silence, left)));
  }

  // A kept-alive connection the server has since closed fails before any answer: try a fresh one once.
  void retry_or_fail(const char* op, beast::error_code ec) {
    if (reused_ && !st_.past_deadline()) {
      reused_ = false;
      close();
      return connect();
    }
    fail(op, ec);
  }

  void fail(const char* op, beast::error_code ec) {
    if (ec == beast::error::timeout) {
      return fail(st_.past_deadline() ? st_.deadline_error() : st_.silence_error(c_.opt.timeout));
    }
    fail(std::string(op) + ": " + ec.message());
  }
  void fail(const std::string& what) {
    close();
    st_.finish(steady::now(), what);
  }

  void close() {
    if (!stream_) return;
    beast::error_code ec;
    stream_->socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_->close();
  }

  serve_client::impl& c_;
  request_state st_;
  http::request<http::string_body> req_;
  std::unique_ptr<beast::tcp_stream> stream_;
  bool reused_ = false;
  beast::flat_buffer rbuf_;
  std::optional<http::response_parser<http::buffer_body>> parser_;
  unsigned status_ = 0;
  char chunk_[16384];
  sse_reader sse_;
  bool done_seen_ = false;
  std::string stream_error_, error_body_;
};

// One WebSocket carrying many requests, told apart by id. All state lives on the socket's strand.
class ws_conn : public std::enable_shared_from_this<ws_conn> {
  struct live_request {
    std::shared_ptr<request_state> st;
    std::unique_ptr<net::steady_timer> timer;  // deadline and silence, on the strand; destroyed = cancelled
  };

 public:
  explicit ws_conn(serve_client::impl& c) : c_(c), ws_(net::make_strand(c.ioc)) {}

  // Blocking, before the benchmark starts, so the handshake is not part of any request's timing.
  void connect() {
    beast::error_code ec;
    beast::get_lowest_layer(ws_).connect(c_.endpoints, ec);
    if (ec)
      throw error("bench serve: cannot connect to " + c_.opt.server.host + ":" + c_.opt.server.port + ": " +
                  ec.message());
    beast::get_lowest_layer(ws_).socket().set_option(tcp::no_delay(true), ec);
    const std::string key = c_.opt.api_key;
    ws_.set_option(websocket::stream_base::decorator([key](websocket::request_type& req) {
      if (!key.empty()) req.set(http::field::authorization, "Bearer " + key);
    }));
    websocket::response_type res;
    ws_.handshake(res, c_.opt.server.host + ":" + c_.opt.server.port, c_.opt.server.base_path + "/v1/ws", ec);
    if (ec) {
      throw error("bench serve: WebSocket upgrade of " + c_.opt.server.base_path +
                  "/v1/ws failed: " + ec.message() +
                  (res.result_int() ? " (HTTP " + std::to_string(res.result_int()) + ")" : ""));
    }
    ws_.text(true);
    auto t = websocket::stream_base::timeout::suggested(beast::role_type::client);
    t.idle_timeout = c_.opt.timeout;
    t.keep_alive_pings = true;
    ws_.set_option(t);
    read();
  }

  void submit(const sample_request& r, const std::string& id, done_fn done) {
    auto st = std::make_shared<request_state>(r, id, "ws", c_.opt.request_timeout, std::move(done));
    json j = request_json(r, c_.opt.model);
    j["type"] = "generate";
    j["id"] = id;
    if (r.prompt_ids.empty()) {
      j["prompt"] = r.prompt_text;
    } else {
      j["prompt_ids"] = r.prompt_ids;
    }
    net::post(ws_.get_executor(), [self = shared_from_this(), st, id, msg = j.dump()]() mutable {
      if (self->dead_) return st->finish(steady::now(), "WebSocket: " + self->why_dead_);
      live_request& lr = self->live_[id];
      lr.st = std::move(st);
      lr.timer = std::make_unique<net::steady_timer>(self->ws_.get_executor());
      self->arm(id, lr);
      self->send(std::move(msg));
    });
  }

  void close() {
    net::post(ws_.get_executor(), [self = shared_from_this()] {
      if (self->dead_ || self->closing_) return;
      self->closing_ = true;
      if (self->outq_.empty()) self->start_close();  // else once the queued messages (cancels) are out
    });
  }

 private:
  void send(std::string msg) {
    outq_.push_back(std::move(msg));
    if (outq_.size() == 1) write();
  }

  void write() {
    ws_.async_write(net::buffer(outq_.front()), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->die("write: " + ec.message());
      self->outq_.pop_front();
      if (!self->outq_.empty()) return self->write();
      if (self->closing_) self->start_close();
    });
  }

  void start_close() {
    ws_.async_close(websocket::close_code::normal, [self = shared_from_this()](beast::error_code) {});
  }

  void read() {
    ws_.async_read(rbuf_, [self = shared_from_this()](beast::error_code ec, size_t) {
      const auto t = steady::now();
      if (ec)
        return self->die(ec == websocket::error::closed ? "closed by the server" : "read: " + ec.message());
      self->on_message(t, beast::buffers_to_string(self->rbuf_.data()));
      self->rbuf_.consume(self->rbuf_.size());
      self->read();
    });
  }

  void on_message(steady::time_point t, const std::string& text) {
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return;
    const std::string type = j.value("type", std::string());
    if (!j.contains("id") || !j["id"].is_string()) return;  // an error not tied to a request: nothing to time
    auto it = live_.find(j["id"].get<std::string>());
    if (it == live_.end()) return;  // e.g. the done or error frame of a request cancelled at its deadline
    auto& st = *it->second.st;
    st.last_activity = t;
    if (type == "token") {
      const auto ids = j.find("token_ids");
      st.on_output(t, ids != j.end() && ids->is_array() ? static_cast<int32_t>(ids->size()) : 1);
    } else if (type == "done") {
      if (auto u = j.find("usage"); u != j.end()) st.on_usage(*u);
      const std::string reason = j.value("finish_reason", std::string());
      st.finish(t, reason == "cancelled" ? "cancelled by the server" : "");
      live_.erase(it);
    } else if (type == "error") {
      st.finish(t, error_message(j));
      live_.erase(it);
    }
  }

  // The socket is never silent (keep-alive pings), so each request keeps its own time: one timer wakes at
  // its deadline or when nothing has come for it for --timeout, whichever is first. Frames only move
  // last_activity; the timer re-arms itself when it finds the request still active.
  void arm(const std::string& id, live_request& lr) {
    const request_state& st = *lr.st;
    lr.timer->expires_at(std::min(st.deadline, st.last_activity + c_.opt.timeout));
    lr.timer->async_wait([self = shared_from_this(), id, which = lr.st.get()](beast::error_code ec) {
      if (!ec) self->on_timer(id, which);
    });
  }

  // Fails a request that ran past its deadline or went silent, and cancels it on the server so that it
  // stops using the engine; the frames that still come for it are ignored.
  void on_timer(const std::string& id, const request_state* which) {
    auto it = live_.find(id);
    if (it == live_.end() || it->second.st.get() != which) return;
    const auto now = steady::now();
    const request_state& cur = *it->second.st;
    std::string why;
    if (now >= cur.deadline) {
      why = cur.deadline_error();
    } else if (now >= cur.last_activity + c_.opt.timeout) {
      why = cur.silence_error(c_.opt.timeout);
    } else {
      return arm(id, it->second);
    }
    const auto st = std::move(it->second.st);
    live_.erase(it);
    if (!dead_ && !closing_) send(json{{"type", "cancel"}, {"id", id}}.dump());
    st->finish(now, std::move(why));
  }

  void die(const std::string& why) {
    dead_ = true;
    why_dead_ = why;
    for (auto& [id, lr] : live_) lr.st->finish(steady::now(), "WebSocket: " + why);
    live_.clear();  // destroying the timers cancels their waits
    if (!closing_) {
      beast::error_code ec;
      beast::get_lowest_layer(ws_).socket().close(ec);
    }
  }

  serve_client::impl& c_;
  websocket::stream<beast::tcp_stream> ws_;
  beast::flat_buffer rbuf_;
  std::deque<std::string> outq_;  // whole messages; Beast allows one write in flight
  std::unordered_map<std::string, live_request> live_;
  bool dead_ = false, closing_ = false;
  std::string why_dead_;
};

serve_client::serve_client(client_options opt) : impl_(std::make_unique<impl>(std::move(opt))) {
  auto& c = *impl_;
  tcp::resolver resolver(c.ioc);
  beast::error_code ec;
  c.endpoints = resolver.resolve(c.opt.server.host, c.opt.server.port, ec);
  if (ec || c.endpoints.empty()) {
    throw error("bench serve: cannot resolve " + c.opt.server.host + ":" + c.opt.server.port + ": " +
                ec.message());
  }
  c.work.emplace(c.ioc.get_executor());
  for (int32_t i = 0; i < std::max(1, c.opt.io_threads); ++i) c.threads.emplace_back([&c] { c.ioc.run(); });
  if (c.opt.backend == backend_kind::ws) {
    try {
      for (int32_t i = 0; i < std::max(1, c.opt.ws_connections); ++i) {
        c.ws.push_back(std::make_shared<ws_conn>(c));
        c.ws.back()->connect();
      }
    } catch (...) {
      c.ioc.stop();
      for (auto& t : c.threads) t.join();
      throw;
    }
  }
}

serve_client::~serve_client() {
  auto& c = *impl_;
  for (auto& w : c.ws) w->close();
  c.work.reset();
  // The close handshakes normally end the read loops at once; a server that never answers is cut off.
  const auto deadline = steady::now() + std::chrono::seconds(2);
  while (!c.ioc.stopped() && steady::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  c.ioc.stop();
  for (auto& t : c.threads) t.join();
}

void serve_client::submit(const sample_request& r, done_fn done) {
  auto& c = *impl_;
  const uint64_t n = c.next_id.fetch_add(1);
  std::string id = "r" + std::to_string(n);
  if (c.opt.backend == backend_kind::ws) {
    c.ws[n % c.ws.size()]->submit(r, id, std::move(done));
    return;
  }
  std::make_shared<http_op>(c, r, std::move(id), std::move(done))->run();
}

std::string http_get(const server_address& server, const std::string& target, const std::string& api_key) {
  net::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::tcp_stream stream(ioc);
  beast::error_code ec;
  auto eps = resolver.resolve(server.host, server.port, ec);
  if (!ec) stream.connect(eps, ec);
  if (ec)
    throw error("bench serve: cannot connect to " + server.host + ":" + server.port + ": " + ec.message());
  http::request<http::empty_body> req{http::verb::get, server.base_path + target, 11};
  req.set(http::field::host, server.host + ":" + server.port);
  if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
  http::response<http::string_body> res;
  beast::flat_buffer buf;
  http::write(stream, req, ec);
  if (!ec) http::read(stream, buf, res, ec);
  if (ec) throw error("bench serve: GET " + target + ": " + ec.message());
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  if (res.result_int() != 200) {
    throw error("bench serve: GET " + target + " answered HTTP " + std::to_string(res.result_int()) + ": " +
                res.body().substr(0, 300));
  }
  return res.body();
}

}  // namespace troupe::cli::bench_serve
