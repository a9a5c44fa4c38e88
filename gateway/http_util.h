// Small pieces the HTTP and WebSocket sessions share: route names, engine refusals as API errors, and the
// sink that carries engine events onto a connection's io_context.
#pragma once

#include <boost/asio/post.hpp>
#include <memory>
#include <string>
#include <string_view>

#include "core/engine_api.h"
#include "gateway/api_error.h"
#include "gateway/gateway_state.h"

namespace troupe::gateway {

// The path of a request target, without the query.
std::string target_path(std::string_view target);
// The metrics label for a target: a known route, or "other" (unknown paths must not grow the label set).
std::string route_name(std::string_view target);

// invalid -> 400, queue_full -> 429, unavailable -> 503.
api_error submit_error(const submit_result& r, int retry_after_s);

// A sink that copies each event onto the session's io_context, where Session::on_event runs it. It never
// blocks the engine thread, and drops events for sessions (or a server) that are gone.
template <class Session, class Executor>
request_sink make_sink(std::weak_ptr<Session> session, const std::shared_ptr<gateway_state>& st,
                       Executor ex) {
  std::weak_ptr<void> pool = st->io_pool;
  return [session = std::move(session), pool = std::move(pool), ex](const request_event& ev) {
    std::shared_ptr<void> keep = pool.lock();  // the io_context stays alive during post()
    if (!keep) return;
    boost::asio::post(ex, [session, ev] {
      if (auto s = session.lock()) s->on_event(ev);
    });
  };
}

}  // namespace troupe::gateway
