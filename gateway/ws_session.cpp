// One /v1/ws connection (protocol: docs/websocket-protocol.md). Many requests share the socket, told apart
// by the client's ids. Beast enforces RFC 6455 on what it reads (masking, control frames, UTF-8 of text
// messages, the size cap) and closes with the matching code itself; this file adds the application
// layer, the slow-reader cap and aborting every request of a socket that goes away.
#include <boost/asio/ssl/stream.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <deque>
#include <map>

#include "gateway/http_util.h"
#include "gateway/sessions.h"

namespace troupe::gateway {

namespace beast = boost::beast;
namespace websocket = beast::websocket;
namespace net = boost::asio;

namespace {

constexpr size_t kMaxIdBytes = 256;

// The close code Beast answered a protocol violation in a read with (impl/read.hpp); null for errors that
// answered nothing (a timeout, a reset).
const char* beast_close_code(beast::error_code ec) {
  if (ec.category() != make_error_code(websocket::error::closed).category()) return nullptr;
  if (ec == websocket::error::message_too_big) return "1009";
  if (ec == websocket::error::bad_frame_payload) return "1007";
  return "1002";
}

json error_frame(const json& id, const std::string& message, const std::string& type,
                 const std::string& code) {
  return {{"type", "error"}, {"id", id}, {"error", {{"message", message}, {"type", type}, {"code", code}}}};
}

template <class Stream>
class ws_session : public std::enable_shared_from_this<ws_session<Stream>> {
 public:
  ws_session(Stream stream, std::shared_ptr<gateway_state> st)
      : ws_(std::move(stream)),
        st_(std::move(st)),
        prefix_("ws" + std::to_string(st_->next_connection++) + "-") {
    st_->metrics.websockets_open.inc();
  }
  ~ws_session() {
    abort_all();
    st_->in_flight.fetch_sub(static_cast<int64_t>(live_.size()));  // their final events find no session
    st_->metrics.websockets_open.dec();
  }

  void run(http_request req) {
    ws_.read_message_max(st_->opts.ws_max_message_bytes);
    websocket::stream_base::timeout t{};
    t.handshake_timeout = std::chrono::seconds(30);
    t.idle_timeout = st_->opts.ws_idle_timeout;  // a ping goes out after half of it
    t.keep_alive_pings = true;
    ws_.set_option(t);
    ws_.set_option(websocket::stream_base::decorator(
        [](websocket::response_type& res) { res.set(beast::http::field::server, "troupe"); }));
    ws_.async_accept(req, [self = this->shared_from_this()](beast::error_code ec) {
      if (ec) return;
      self->read();
    });
  }

  void on_event(const request_event& ev);

 private:
  struct live_request {
    std::string client_id;
    int32_t n = 1;
    bool logprobs = false;
    std::vector<std::string> finish_reasons;  // [n]
  };

  void read() {
    ws_.async_read(in_,
                   [self = this->shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec) {  // closed by the peer, or a protocol violation Beast already answered with its close code
      if (ec != websocket::error::closed && ec != net::error::eof && ec != net::error::operation_aborted) {
        st_->metrics.count_error("websocket_protocol");
        if (const char* code = beast_close_code(ec))
          st_->metrics.count_api_error("invalid_request_error", code);
      }
      closed_ = true;
      abort_all();
      return;
    }
    st_->metrics.websocket_messages.inc();
    const std::string text = beast::buffers_to_string(in_.data());
    in_.consume(in_.size());
    if (!ws_.got_text()) {
      return close_with(websocket::close_code::unknown_data, "binary messages are not supported");
    }
    try {
      handle(text);
    } catch (const std::exception& e) {
      st_->metrics.count_error("internal");
      return close_with(websocket::close_code::internal_error, "internal error");
    }
    if (!closing_) read();
  }

  // An error frame (id null when the message had none usable), counted by type and code.
  void send_error(const json& id, const std::string& message, const std::string& type,
                  const std::string& code) {
    st_->metrics.count_api_error(type, code);
    send(error_frame(id, message, type, code));
  }

  void handle(const std::string& text);
  void generate(const json& msg, const std::string& id);

  void send(const json& frame) {
    if (closing_ || closed_) return;
    std::string s = frame.dump(-1, ' ', false, json::error_handler_t::replace);
    out_bytes_ += s.size();
    out_.push_back(std::move(s));
    if (out_bytes_ > st_->opts.ws_max_buffered_bytes) {
      // The client does not read: its socket buffer is full, so no close frame could go out either.
      st_->metrics.count_error("slow_reader");
      closed_ = true;
      abort_all();
      out_.clear();
      beast::get_lowest_layer(ws_).close();
      return;
    }
    write_next();
  }

  void write_next() {
    if (writing_ || closed_) return;
    if (out_.empty()) {
      if (closing_) start_close();
      return;
    }
    current_ = std::move(out_.front());
    out_.pop_front();
    out_bytes_ -= current_.size();
    writing_ = true;
    ws_.text(true);
    ws_.async_write(net::buffer(current_), [self = this->shared_from_this()](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) {
        self->closed_ = true;
        self->abort_all();
        return;
      }
      self->write_next();
    });
  }

  // Close after what is queued (a write may be in flight: Beast allows no close during a write).
  void close_with(websocket::close_code code, const char* reason) {
    if (closing_) return;
    closing_ = true;
    st_->metrics.count_api_error(
        code == websocket::close_code::internal_error ? "server_error" : "invalid_request_error",
        std::to_string(static_cast<int>(code)));
    close_reason_ = websocket::close_reason(code, reason);
    abort_all();
    write_next();
  }
  void start_close() {
    if (close_started_ || closed_) return;
    close_started_ = true;
    ws_.async_close(close_reason_,
                    [self = this->shared_from_this()](beast::error_code) { self->closed_ = true; });
  }

  void abort_all() {
    engine* e = st_->eng.load();
    if (!e) return;
    for (const auto& [engine_id, r] : live_) e->abort(engine_id);
    // Entries stay until their final event: the ids are still in use until then.
  }

  websocket::stream<Stream> ws_;
  std::shared_ptr<gateway_state> st_;
  const std::string prefix_;  // makes engine ids unique across connections
  beast::flat_buffer in_;
  std::deque<std::string> out_;
  std::string current_;
  size_t out_bytes_ = 0;
  bool writing_ = false, closing_ = false, close_started_ = false, closed_ = false;
  websocket::close_reason close_reason_;
  std::map<std::string, live_request> live_;  // by engine id
  std::map<std::string, std::string> ids_;    // client id -> engine id
};

template <class Stream>
void ws_session<Stream>::handle(const std::string& text) {
  json msg;
  try {
    msg = json::parse(text);
  } catch (const json::exception& e) {
    st_->metrics.count_error("invalid_json");
    return send_error(nullptr, std::string("not valid JSON: ") + e.what(), "invalid_request_error",
                      "invalid_json");
  }
  if (!msg.is_object() || !msg.contains("type") || !msg["type"].is_string()) {
    return send_error(nullptr, "a message is a JSON object with a string \"type\"", "invalid_request_error",
                      "invalid_message");
  }
  const auto idv = msg.find("id");
  if (idv == msg.end() || !idv->is_string() || idv->get<std::string>().empty() ||
      idv->get<std::string>().size() > kMaxIdBytes) {
    return send_error(idv == msg.end() ? json(nullptr) : *idv,
                      "\"id\" must be a non-empty string of at most 256 bytes", "invalid_request_error",
                      "invalid_id");
  }
  const std::string id = idv->get<std::string>();
  const std::string type = msg["type"].get<std::string>();
  if (type == "generate") return generate(msg, id);
  if (type == "cancel") {
    auto it = ids_.find(id);
    if (it == ids_.end()) {
      return send_error(id, "no live request with this id", "invalid_request_error", "unknown_id");
    }
    if (engine* e = st_->eng.load()) e->abort(it->second);  // its done frame says "cancelled"
    return;
  }
  send_error(id, "unknown message type '" + type + "' (expected generate or cancel)", "invalid_request_error",
             "unknown_type");
}

template <class Stream>
void ws_session<Stream>::generate(const json& msg, const std::string& id) {
  if (ids_.count(id)) {
    st_->metrics.count_error("duplicate_id");
    return send_error(id, "a request with this id is still running", "invalid_request_error", "duplicate_id");
  }
  if (const char* why = st_->unavailable_reason(); *why) {
    st_->metrics.count_error("unavailable");
    return send_error(id, why, "service_unavailable", st_->draining ? "draining" : "unavailable");
  }
  generation_request g;
  try {
    g = parse_ws_generate(msg, st_->make_context());
  } catch (const api_error& e) {
    st_->metrics.count_error(e.code.empty() ? e.type : e.code);
    return send_error(id, e.what(), e.type, e.code.empty() ? "invalid_request" : e.code);
  }
  engine_request er;
  er.id = prefix_ + id;
  er.prompt_ids = std::move(g.prompt_ids);
  er.params = g.params;
  live_request lr;
  lr.client_id = id;
  lr.n = g.params.n;
  lr.logprobs = g.logprobs;
  lr.finish_reasons.assign(static_cast<size_t>(g.params.n), "");
  const std::string engine_id = er.id;
  st_->in_flight.fetch_add(1);
  const submit_result r = st_->eng.load()->submit(
      std::move(er), make_sink(this->weak_from_this(), st_, beast::get_lowest_layer(ws_).get_executor()));
  if (r.status != submit_status::accepted) {
    st_->in_flight.fetch_sub(1);
    const api_error e = submit_error(r, st_->opts.retry_after_s);
    st_->metrics.count_error(e.code.empty() ? e.type : e.code);
    return send_error(id, e.what(), e.type, e.code.empty() ? "invalid_request" : e.code);
  }
  live_.emplace(engine_id, std::move(lr));
  ids_.emplace(id, engine_id);
}

template <class Stream>
void ws_session<Stream>::on_event(const request_event& ev) {
  auto it = live_.find(ev.id);
  if (it == live_.end()) return;
  live_request& r = it->second;
  for (const sequence_delta& d : ev.deltas) {
    if (d.index >= 0 && d.index < r.n && d.finish_reason) r.finish_reasons[d.index] = *d.finish_reason;
    if (d.token_ids.empty() && d.text.empty()) continue;
    json f = {{"type", "token"},
              {"id", r.client_id},
              {"index", d.index},
              {"text", d.text},
              {"token_ids", d.token_ids}};
    if (r.logprobs) {
      f["logprobs"] = d.token_logprobs;
      json tops = json::array();
      for (const auto& per_token : d.top_logprobs) {
        json t = json::array();
        for (const auto& tl : per_token) t.push_back({{"id", tl.id}, {"logprob", tl.logprob}});
        tops.push_back(std::move(t));
      }
      f["top_logprobs"] = std::move(tops);
    }
    send(f);
  }
  if (!ev.finished) return;
  if (ev.error) {
    st_->metrics.count_error("engine");
    send_error(r.client_id, "the engine failed the request: " + *ev.error, "server_error", "engine_error");
  } else {
    const json usage = {{"prompt_tokens", ev.usage.prompt_tokens},
                        {"completion_tokens", ev.usage.completion_tokens}};
    const json timing = {{"queue_ms", ev.timing.queue_s * 1e3},
                         {"ttft_ms", ev.timing.ttft_s * 1e3},
                         {"total_ms", ev.timing.total_s * 1e3}};
    for (int32_t i = 0; i < r.n; ++i) {
      const std::string& fr = r.finish_reasons[i];
      send({{"type", "done"},
            {"id", r.client_id},
            {"index", i},
            {"finish_reason", fr.empty() || fr == "abort" ? "cancelled" : fr},
            {"usage", usage},
            {"timing", timing}});
    }
  }
  st_->in_flight.fetch_sub(1);
  ids_.erase(r.client_id);
  live_.erase(it);
}

}  // namespace

template <class Stream>
void run_ws_session(Stream stream, http_request req, std::shared_ptr<gateway_state> state) {
  std::make_shared<ws_session<Stream>>(std::move(stream), std::move(state))->run(std::move(req));
}

template void run_ws_session<plain_stream>(plain_stream, http_request, std::shared_ptr<gateway_state>);
template void run_ws_session<tls_stream>(tls_stream, http_request, std::shared_ptr<gateway_state>);

}  // namespace troupe::gateway
