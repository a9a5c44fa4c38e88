#include "gateway/server.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "gateway/sessions.h"

namespace troupe::gateway {

namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

// The io_contexts, one thread each. Owned through a shared_ptr whose weak twin lives in gateway_state.
struct io_pool {
  explicit io_pool(int n) {
    for (int i = 0; i < n; ++i) contexts.push_back(std::make_unique<net::io_context>(1));
  }
  std::vector<std::unique_ptr<net::io_context>> contexts;
};

}  // namespace

struct server::impl {
  std::shared_ptr<io_pool> pool;
  std::vector<net::executor_work_guard<net::io_context::executor_type>> work;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::unique_ptr<net::ssl::context> tls;
  std::vector<std::thread> threads;
  size_t next = 0;
  uint16_t port = 0;
  std::mutex stop_mu;
  bool running = false;

  void accept(const std::shared_ptr<gateway_state>& st) {
    net::io_context& ioc = *pool->contexts[next++ % pool->contexts.size()];
    acceptor->async_accept(ioc, [this, st](boost::system::error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor->is_open()) return;
      if (!ec) {
        boost::system::error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);  // tokens are small writes; don't wait for acks
        if (tls) {
          run_https_session(std::move(socket), *tls, st);
        } else {
          run_http_session(std::move(socket), st);
        }
      }
      accept(st);
    });
  }
};

server::server(server_options opts, engine* eng)
    : state_(std::make_shared<gateway_state>(std::move(opts))), impl_(std::make_unique<impl>()) {
  state_->eng.store(eng);
}

server::~server() { stop(); }

void server::start() {
  std::lock_guard<std::mutex> lock(impl_->stop_mu);
  if (impl_->running) return;
  const server_options& o = state_->opts;
  const int n = o.threads > 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  impl_->pool = std::make_shared<io_pool>(n);
  state_->io_pool = impl_->pool;
  if (!o.tls_cert_file.empty() || !o.tls_key_file.empty()) {
    if (o.tls_cert_file.empty() || o.tls_key_file.empty()) {
      throw error("gateway: TLS needs both a certificate file and a key file");
    }
    impl_->tls = std::make_unique<net::ssl::context>(net::ssl::context::tls_server);
    impl_->tls->set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
                            net::ssl::context::no_sslv3 | net::ssl::context::no_tlsv1 |
                            net::ssl::context::no_tlsv1_1);
    try {
      impl_->tls->use_certificate_chain_file(o.tls_cert_file);
      impl_->tls->use_private_key_file(o.tls_key_file, net::ssl::context::pem);
    } catch (const boost::system::system_error& e) {
      throw error("gateway: cannot load TLS certificate " + o.tls_cert_file + " / key " + o.tls_key_file +
                  ": " + e.what());
    }
  }
  try {
    net::io_context& first = *impl_->pool->contexts[0];
    const tcp::endpoint ep(net::ip::make_address(o.host), o.port);
    impl_->acceptor = std::make_unique<tcp::acceptor>(first);
    impl_->acceptor->open(ep.protocol());
    impl_->acceptor->set_option(net::socket_base::reuse_address(true));
    impl_->acceptor->bind(ep);
    impl_->acceptor->listen(net::socket_base::max_listen_connections);
    impl_->port = impl_->acceptor->local_endpoint().port();
  } catch (const boost::system::system_error& e) {
    throw error("gateway: cannot listen on " + o.host + ":" + std::to_string(o.port) + ": " + e.what());
  }
  for (auto& ioc : impl_->pool->contexts) impl_->work.push_back(net::make_work_guard(*ioc));
  impl_->accept(state_);
  for (auto& ioc : impl_->pool->contexts) {
    net::io_context* c = ioc.get();
    impl_->threads.emplace_back([c] { c->run(); });
  }
  impl_->running = true;
}

void server::set_engine(engine* eng) { state_->eng.store(eng); }

void server::set_auth(std::vector<std::string> api_keys, std::vector<std::string> public_routes) {
  state_->set_auth(std::make_shared<const authenticator>(std::move(api_keys), std::move(public_routes)));
}

uint16_t server::port() const { return impl_->port; }

void server::begin_drain() { state_->draining.store(true); }

int64_t server::in_flight() const { return state_->in_flight.load(); }

void server::stop() {
  std::lock_guard<std::mutex> lock(impl_->stop_mu);
  if (!impl_->running) return;
  begin_drain();
  const auto deadline = std::chrono::steady_clock::now() + state_->opts.drain_timeout;
  while (state_->in_flight.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // Close the acceptor on its own thread (acceptors are not thread-safe), then let everything stop.
  net::post(impl_->acceptor->get_executor(), [a = impl_->acceptor.get()] {
    boost::system::error_code ignored;
    a->close(ignored);
  });
  impl_->work.clear();
  for (auto& ioc : impl_->pool->contexts) ioc->stop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
  impl_->acceptor.reset();
  // Destroying the io_contexts destroys the sessions their queued handlers hold, closing every socket; a
  // sink posting right now holds the pool until it is done.
  impl_->pool.reset();
  impl_->running = false;
}

}  // namespace troupe::gateway
