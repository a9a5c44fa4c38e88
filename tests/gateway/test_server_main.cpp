// troupe_gateway_test_server: the gateway in front of the fake engine, for the client-driven tests.
// Prints "listening on PORT" once it accepts connections; SIGINT/SIGTERM drain and exit.
//
//   troupe_gateway_test_server [--port 0] [--step-ms 5] [--max-live 256] [--api-key K]... [--public R]...
//     [--max-body N] [--header-timeout-ms N] [--ws-max-message N] [--ws-max-buffered N] [--max-model-len N]
//     [--eos-after N] [--load-delay-ms N] [--no-chat-template] [--tls-cert F --tls-key F] [--threads N]
#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <thread>

#include "core/chat_template/chat_template.h"
#include "gateway/chat_prompt.h"
#include "gateway/server.h"
#include "tests/gateway/fake_engine.h"

namespace {

// ChatML, as Qwen ships it (a trimmed version without tools).
const char* kChatTemplate =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif "
    "%}";

}  // namespace

int main(int argc, char** argv) {
  using namespace troupe;
  gateway::server_options opts;
  opts.host = "127.0.0.1";
  opts.port = 0;
  opts.threads = 2;
  opts.drain_timeout = std::chrono::milliseconds(10000);
  testing::fake_engine_options eo;
  bool chat = true;
  int load_delay_ms = 0;
  bool custom_public = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--port") {
      opts.port = static_cast<uint16_t>(std::stoi(next()));
    } else if (a == "--threads") {
      opts.threads = std::stoi(next());
    } else if (a == "--step-ms") {
      eo.step_delay = std::chrono::milliseconds(std::stoi(next()));
    } else if (a == "--max-live") {
      eo.max_live = std::stoi(next());
    } else if (a == "--max-model-len") {
      eo.max_model_len = std::stoll(next());
    } else if (a == "--eos-after") {
      eo.eos_after = std::stoi(next());
    } else if (a == "--api-key") {
      opts.api_keys.push_back(next());
    } else if (a == "--public") {
      if (!custom_public) opts.public_routes.clear();
      custom_public = true;
      opts.public_routes.push_back(next());
    } else if (a == "--max-body") {
      opts.max_body_bytes = std::stoull(next());
    } else if (a == "--header-timeout-ms") {
      opts.header_timeout = std::chrono::milliseconds(std::stoi(next()));
    } else if (a == "--ws-max-message") {
      opts.ws_max_message_bytes = std::stoull(next());
    } else if (a == "--ws-max-buffered") {
      opts.ws_max_buffered_bytes = std::stoull(next());
    } else if (a == "--load-delay-ms") {
      load_delay_ms = std::stoi(next());
    } else if (a == "--no-chat-template") {
      chat = false;
    } else if (a == "--tls-cert") {
      opts.tls_cert_file = next();
    } else if (a == "--tls-key") {
      opts.tls_key_file = next();
    } else {
      std::cerr << "unknown flag " << a << "\n";
      return 2;
    }
  }
  if (chat) {
    auto tmpl = std::make_shared<model_chat_template>(model_chat_template{
        chat_template::parse(kChatTemplate), std::nullopt, std::string("<|endoftext|>"), "inline"});
    opts.chat_renderer = gateway::make_chat_renderer(tmpl);
  }

  // Block the signals before any thread starts, so only sigwait below sees them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  testing::fake_engine eng(eo);
  gateway::server srv(opts, load_delay_ms > 0 ? nullptr : &eng);
  try {
    srv.start();
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  std::cout << "listening on " << srv.port() << std::endl;
  std::thread loader;
  if (load_delay_ms > 0) {
    loader = std::thread([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(load_delay_ms));
      srv.set_engine(&eng);
      std::cout << "engine ready" << std::endl;
    });
  }
  int sig = 0;
  sigwait(&set, &sig);
  std::cout << "draining (" << srv.in_flight() << " in flight)" << std::endl;
  srv.stop();
  if (loader.joinable()) loader.join();
  std::cout << "stopped" << std::endl;
  return 0;
}
