// Entry points of the connection handlers (internal to the gateway). Each takes over an accepted socket;
// the session keeps itself alive through its pending operations.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <memory>

#include "gateway/gateway_state.h"

namespace troupe::gateway {

using plain_stream = boost::beast::tcp_stream;
using tls_stream = boost::beast::ssl_stream<boost::beast::tcp_stream>;
using http_request = boost::beast::http::request<boost::beast::http::string_body>;

void run_http_session(boost::asio::ip::tcp::socket socket, std::shared_ptr<gateway_state> state);
void run_https_session(boost::asio::ip::tcp::socket socket, boost::asio::ssl::context& tls,
                       std::shared_ptr<gateway_state> state);

// After an HTTP session saw an authorized upgrade request for /v1/ws (instantiated for both streams).
template <class Stream>
void run_ws_session(Stream stream, http_request req, std::shared_ptr<gateway_state> state);

}  // namespace troupe::gateway
