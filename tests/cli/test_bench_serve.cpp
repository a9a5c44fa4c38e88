// The pure parts of `troupe bench serve`: figures (percentiles, TPOT, goodput), dataset sampling,
// arrivals, the ShareGPT filter on tests/cli/data/sharegpt_small.json, the SSE reader and URL parsing;
// and the client's per-request deadline against in-process servers that never end a stream.
#include <gtest/gtest.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <cmath>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "cli/bench_serve_client.h"
#include "cli/bench_serve_dataset.h"
#include "cli/bench_serve_stats.h"
#include "core/error.h"

namespace troupe::cli::bench_serve {
namespace {

request_outcome ok(double ttft, double latency, int32_t out, std::vector<double> itl = {}) {
  request_outcome r;
  r.success = true;
  r.ttft_ms = ttft;
  r.latency_ms = latency;
  r.output_tokens = out;
  r.expected_output_tokens = out;
  r.prompt_tokens = 10;
  r.itl_ms = std::move(itl);
  return r;
}

TEST(BenchServeStats, PercentileInterpolatesLikeNumpy) {
  // numpy.percentile([4, 1, 3, 2], [50, 90, 99, 0, 100]) == [2.5, 3.7, 3.97, 1, 4]
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 50), 2.5);
  EXPECT_NEAR(percentile({4, 1, 3, 2}, 90), 3.7, 1e-12);
  EXPECT_NEAR(percentile({4, 1, 3, 2}, 99), 3.97, 1e-12);
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 0), 1);
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 100), 4);
  EXPECT_DOUBLE_EQ(percentile({7}, 99), 7);
  EXPECT_DOUBLE_EQ(percentile({}, 50), 0);
}

TEST(BenchServeStats, SummarizeGivesMeanMedianTailsAndStd) {
  const auto d = summarize({1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  EXPECT_DOUBLE_EQ(d.mean, 5.5);
  EXPECT_DOUBLE_EQ(d.median, 5.5);
  EXPECT_NEAR(d.p90, 9.1, 1e-12);
  EXPECT_NEAR(d.p99, 9.91, 1e-12);
  EXPECT_NEAR(d.std, std::sqrt(8.25), 1e-12);
  const auto empty = summarize({});
  EXPECT_EQ(empty.mean, 0);
  EXPECT_EQ(empty.p99, 0);
}

TEST(BenchServeStats, TpotExcludesTheFirstToken) {
  EXPECT_DOUBLE_EQ(*tpot_ms(ok(10, 100, 10)), 10.0);  // (100 - 10) / 9
  EXPECT_DOUBLE_EQ(*tpot_ms(ok(20, 20.5, 2)), 0.5);
  EXPECT_FALSE(tpot_ms(ok(10, 10, 1)).has_value());
  auto failed = ok(10, 100, 10);
  failed.success = false;
  EXPECT_FALSE(tpot_ms(failed).has_value());
}

TEST(BenchServeStats, ParseGoodput) {
  auto s = parse_goodput("ttft:200 tpot:50");
  EXPECT_EQ(*s.ttft_ms, 200);
  EXPECT_EQ(*s.tpot_ms, 50);
  EXPECT_FALSE(s.e2el_ms.has_value());
  s = parse_goodput("e2el:1500.5,ttft:1");
  EXPECT_EQ(*s.e2el_ms, 1500.5);
  EXPECT_EQ(*s.ttft_ms, 1);
  EXPECT_FALSE(s.empty());
  EXPECT_TRUE(slo_set{}.empty());
  for (const char* bad :
       {"", "ttft", "ttft:", "ttft:abc", "ttft:-1", "latency:5", "ttft:1 ttft:2", "ttft:inf"}) {
    EXPECT_THROW(parse_goodput(bad), troupe::error) << bad;
  }
}

TEST(BenchServeStats, MeetsSlosChecksEveryGivenObjective) {
  slo_set s;
  s.ttft_ms = 50;
  s.tpot_ms = 10;
  EXPECT_TRUE(meets_slos(ok(50, 140, 10), s));   // ttft at the limit, tpot 10
  EXPECT_FALSE(meets_slos(ok(51, 141, 10), s));  // ttft over
  EXPECT_FALSE(meets_slos(ok(10, 110, 10), s));  // tpot 11.1
  EXPECT_TRUE(meets_slos(ok(10, 500, 1), s));    // no tpot to judge
  s.e2el_ms = 100;
  EXPECT_FALSE(meets_slos(ok(10, 101, 100), s));
  auto failed = ok(1, 2, 2);
  failed.success = false;
  EXPECT_FALSE(meets_slos(failed, slo_set{}));
}

TEST(BenchServeStats, SummarizeRunCountsOnlySuccessesAndGoodput) {
  request_outcome failed;
  failed.error = "HTTP 429";
  failed.prompt_tokens = 999;
  const std::vector<request_outcome> rs = {ok(10, 100, 10, {5, 15}), ok(30, 60, 4, {10}), ok(200, 300, 2),
                                           failed};
  slo_set slos;
  slos.ttft_ms = 50;
  const auto s = summarize_run(rs, 2.0, slos);
  EXPECT_EQ(s.completed, 3);
  EXPECT_EQ(s.failed, 1);
  EXPECT_EQ(s.total_input_tokens, 30);
  EXPECT_EQ(s.total_output_tokens, 16);
  EXPECT_DOUBLE_EQ(s.request_throughput, 1.5);
  ASSERT_TRUE(s.request_goodput.has_value());
  EXPECT_DOUBLE_EQ(*s.request_goodput, 1.0);  // two of three meet ttft <= 50
  EXPECT_LE(*s.request_goodput, s.request_throughput);
  EXPECT_DOUBLE_EQ(s.output_throughput, 8.0);
  EXPECT_DOUBLE_EQ(s.total_token_throughput, 23.0);
  EXPECT_DOUBLE_EQ(s.ttft_ms.median, 30);
  EXPECT_DOUBLE_EQ(s.itl_ms.mean, 10);   // 5, 15, 10 pooled over requests
  EXPECT_DOUBLE_EQ(s.tpot_ms.mean, 40);  // 90 / 9, 30 / 3, 100 / 1
  EXPECT_DOUBLE_EQ(s.e2el_ms.mean, 460.0 / 3);
  EXPECT_FALSE(summarize_run(rs, 2.0, slo_set{}).request_goodput.has_value());
  EXPECT_EQ(summarize_run(rs, 0.0, slo_set{}).request_throughput, 0.0);
}

TEST(BenchServeDataset, LengthBounds) {
  EXPECT_EQ(length_bounds(100, 0.5, 1), std::make_pair(50, 150));
  EXPECT_EQ(length_bounds(10, 0.0, 1), std::make_pair(10, 10));
  EXPECT_EQ(length_bounds(100, 0.1, 1), std::make_pair(90, 110));
  EXPECT_EQ(length_bounds(3, 0.9, 1), std::make_pair(1, 5));   // floor(0.3) raised to the minimum
  EXPECT_EQ(length_bounds(7, 0.25, 0), std::make_pair(5, 8));  // floor(5.25), floor(8.75), as vLLM
}

TEST(BenchServeDataset, SampleLengthsAreUniformInBoundsAndSeeded) {
  std::mt19937_64 a(7), b(7);
  const auto x = sample_lengths(100, 0.1, 1, 5000, a);
  EXPECT_EQ(x, sample_lengths(100, 0.1, 1, 5000, b));
  std::map<int32_t, int> seen;
  for (int32_t v : x) {
    ASSERT_GE(v, 90);
    ASSERT_LE(v, 110);
    ++seen[v];
  }
  EXPECT_EQ(seen.size(), 21u);  // every length in [90, 110] turns up
  double mean = 0;
  for (int32_t v : x) mean += v;
  EXPECT_NEAR(mean / x.size(), 100.0, 0.5);
  std::mt19937_64 c(1);
  for (int32_t v : sample_lengths(16, 0.0, 1, 10, c)) EXPECT_EQ(v, 16);
}

TEST(BenchServeDataset, RandomRequestsShareThePrefixAndUseTheGivenIds) {
  std::vector<int32_t> vocab;
  for (int32_t id = 100; id < 200; ++id) vocab.push_back(id);
  std::mt19937_64 rng(3);
  const auto rs = make_random_requests(50, 20, 8, 0.5, 32, vocab, rng);
  ASSERT_EQ(rs.size(), 50u);
  const std::vector<int32_t> prefix(rs[0].prompt_ids.begin(), rs[0].prompt_ids.begin() + 32);
  std::set<int32_t> input_lens;
  for (const auto& r : rs) {
    ASSERT_EQ(static_cast<int32_t>(r.prompt_ids.size()), r.prompt_len);
    EXPECT_GE(r.prompt_len, 32 + 10);
    EXPECT_LE(r.prompt_len, 32 + 30);
    EXPECT_GE(r.output_len, 4);
    EXPECT_LE(r.output_len, 12);
    EXPECT_TRUE(std::equal(prefix.begin(), prefix.end(), r.prompt_ids.begin()));
    for (int32_t id : r.prompt_ids) EXPECT_TRUE(id >= 100 && id < 200) << id;
    EXPECT_TRUE(r.prompt_text.empty());
    input_lens.insert(r.prompt_len);
  }
  EXPECT_GT(input_lens.size(), 5u);
  std::mt19937_64 r2(3);
  const auto exact = make_random_requests(4, 16, 8, 0.0, 0, vocab, r2);
  for (const auto& r : exact) {
    EXPECT_EQ(r.prompt_len, 16);
    EXPECT_EQ(r.output_len, 8);
  }
  EXPECT_THROW(make_random_requests(1, 1, 1, 0, 0, {}, r2), troupe::error);
}

TEST(BenchServeDataset, ArrivalsInfiniteRateAreAllAtOnce) {
  std::mt19937_64 rng(0);
  for (double t : arrival_times(10, INFINITY, 1.0, rng)) EXPECT_EQ(t, 0.0);
}

TEST(BenchServeDataset, ArrivalsHaveMeanGapOneOverRateAndBurstinessSetsTheSpread) {
  for (double burstiness : {1.0, 0.25, 4.0}) {
    std::mt19937_64 rng(11);
    const int n = 40000;
    const auto t = arrival_times(n, 20.0, burstiness, rng);
    EXPECT_EQ(t[0], 0.0);
    double sum = 0, sq = 0;
    for (int i = 1; i < n; ++i) {
      const double gap = t[i] - t[i - 1];
      ASSERT_GE(gap, 0.0);
      sum += gap;
      sq += gap * gap;
    }
    const double mean = sum / (n - 1), var = sq / (n - 1) - mean * mean;
    EXPECT_NEAR(mean, 0.05, 0.05 * 0.03) << burstiness;
    // Gamma(k, theta): squared coefficient of variation 1 / k (1 for a Poisson process).
    EXPECT_NEAR(var / (mean * mean), 1.0 / burstiness, 0.1 / burstiness) << burstiness;
  }
}

int32_t count_words(const std::string& s) {
  std::istringstream in(s);
  std::string w;
  int32_t n = 0;
  while (in >> w) ++n;
  return n;
}

std::string fixture() { return std::string(TROUPE_SOURCE_DIR) + "/tests/cli/data/sharegpt_small.json"; }

TEST(BenchServeDataset, ReadShareGptKeepsConversationsWithTwoTextTurns) {
  const auto pairs = read_sharegpt(fixture());
  ASSERT_EQ(pairs.size(), 7u);  // one-turn, non-object, missing and non-string entries are left out
  EXPECT_EQ(pairs[0].prompt, "one two three four five");
  EXPECT_EQ(pairs[0].completion, "a b c d e f");
  EXPECT_EQ(pairs[5].prompt, "exactly four words here");  // the third turn is ignored
  EXPECT_EQ(pairs[5].completion, "four words of reply");
  EXPECT_THROW(read_sharegpt(fixture() + ".missing"), troupe::error);
}

TEST(BenchServeDataset, ShareGptFilterFollowsVllm) {
  std::mt19937_64 rng(0);
  const auto rs = sample_sharegpt(read_sharegpt(fixture()), 3, count_words, count_words, rng);
  ASSERT_EQ(rs.size(), 3u);
  // Kept: 5 -> 6 tokens, the minimum 4 -> 4 and the maximum 1024 -> 1024 (prompt + reply = 2048).
  std::map<int32_t, int32_t> kept;
  for (const auto& r : rs) {
    kept[r.prompt_len] = r.output_len;
    EXPECT_TRUE(r.prompt_ids.empty());
    EXPECT_EQ(count_words(r.prompt_text), r.prompt_len);
  }
  EXPECT_EQ(kept, (std::map<int32_t, int32_t>{{4, 4}, {5, 6}, {1024, 1024}}));

  // Fewer than asked pass: the kept ones are reused in turn.
  std::mt19937_64 rng2(0);
  const auto many = sample_sharegpt(read_sharegpt(fixture()), 8, count_words, count_words, rng2);
  ASSERT_EQ(many.size(), 8u);
  for (size_t i = 3; i < many.size(); ++i) EXPECT_EQ(many[i].prompt_text, many[i - 3].prompt_text);

  // Only n are tokenized and kept, in shuffled order.
  std::mt19937_64 rng3(0);
  EXPECT_EQ(sample_sharegpt(read_sharegpt(fixture()), 1, count_words, count_words, rng3).size(), 1u);

  std::mt19937_64 rng4(0);
  const auto none = [](const std::string&) { return 2; };
  EXPECT_THROW(sample_sharegpt(read_sharegpt(fixture()), 3, none, none, rng4), troupe::error);
}

TEST(BenchServeClient, SseReaderSplitsEventsAcrossReads) {
  sse_reader r;
  EXPECT_TRUE(r.feed("data: {\"a\"").empty());
  EXPECT_TRUE(r.feed(":1}\n").empty());
  EXPECT_EQ(r.feed("\ndata: [DONE]\n\n"), (std::vector<std::string>{"{\"a\":1}", "[DONE]"}));
  EXPECT_EQ(r.feed("data:x\r\ndata: y\r\n\r\n: comment\n\nevent: e\ndata: z\n\n"),
            (std::vector<std::string>{"x\ny", "z"}));
  EXPECT_TRUE(r.feed("\n\n").empty());  // blank lines without data are no event
}

TEST(BenchServeClient, ParseBaseUrl) {
  auto a = parse_base_url("http://127.0.0.1:8000");
  EXPECT_EQ(a.host, "127.0.0.1");
  EXPECT_EQ(a.port, "8000");
  EXPECT_EQ(a.base_path, "");
  a = parse_base_url("http://example.com/api/");
  EXPECT_EQ(a.host, "example.com");
  EXPECT_EQ(a.port, "80");
  EXPECT_EQ(a.base_path, "/api");
  a = parse_base_url("http://[::1]:9000/x");
  EXPECT_EQ(a.host, "::1");
  EXPECT_EQ(a.port, "9000");
  EXPECT_EQ(a.base_path, "/x");
  for (const char* bad : {"https://h:1", "127.0.0.1:8000", "http://", "http://h:", "http://h:port"}) {
    EXPECT_THROW(parse_base_url(bad), troupe::error) << bad;
  }
}

// A one-connection server on 127.0.0.1 that streams one output chunk for every request and ends the
// streams of `finish_ids` only: the others stay open forever (their final frame is "lost").
class stalling_server {
 public:
  enum class kind { ws, openai };
  stalling_server(kind k, std::set<std::string> finish_ids) : kind_(k), finish_(std::move(finish_ids)) {
    acceptor_.open(tcp::v4());
    acceptor_.bind({boost::asio::ip::make_address("127.0.0.1"), 0});
    acceptor_.listen();
    thread_ = std::thread([this] { run(); });
  }
  ~stalling_server() { thread_.join(); }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port()); }
  // The ids of the cancel messages received, once the client has closed its connection.
  std::vector<std::string> cancels() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return ended_; });
    return cancels_;
  }

 private:
  using tcp = boost::asio::ip::tcp;
  using json = nlohmann::json;

  void run() {
    tcp::socket sock(ioc_);
    acceptor_.accept(sock);
    try {
      if (kind_ == kind::ws) {
        serve_ws(std::move(sock));
      } else {
        serve_openai(std::move(sock));
      }
    } catch (const std::exception&) {
      // the client went away: the end of the test
    }
    std::lock_guard<std::mutex> lk(mu_);
    ended_ = true;
    cv_.notify_all();
  }

  void serve_ws(tcp::socket sock) {
    namespace websocket = boost::beast::websocket;
    websocket::stream<tcp::socket> ws(std::move(sock));
    ws.accept();
    ws.text(true);
    for (;;) {
      boost::beast::flat_buffer buf;
      ws.read(buf);
      const json m = json::parse(boost::beast::buffers_to_string(buf.data()));
      const std::string id = m.at("id");
      if (m.at("type") == "cancel") {
        std::lock_guard<std::mutex> lk(mu_);
        cancels_.push_back(id);
        continue;
      }
      ws.write(boost::asio::buffer(json{{"type", "token"}, {"id", id}, {"token_ids", {7}}}.dump()));
      if (finish_.count(id)) {
        ws.write(boost::asio::buffer(json{
            {"type", "done"}, {"id", id}, {"finish_reason", "length"}, {"usage", {{"completion_tokens", 1}}}}
                                         .dump()));
      }
    }
  }

  void serve_openai(tcp::socket sock) {
    namespace http = boost::beast::http;
    boost::beast::flat_buffer buf;
    http::request<http::string_body> req;
    http::read(sock, buf, req);
    const std::string event = "data: {\"choices\":[{\"text\":\"x\"}]}\n\n";
    std::ostringstream chunk;
    chunk << std::hex << event.size() << "\r\n" << event << "\r\n";
    const std::string head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" +
        chunk.str();
    boost::asio::write(sock, boost::asio::buffer(head));
    char c;
    sock.read_some(boost::asio::buffer(&c, 1));  // until the client gives up and closes: throws eof
  }

  kind kind_;
  std::set<std::string> finish_;
  boost::asio::io_context ioc_;
  tcp::acceptor acceptor_{ioc_};
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool ended_ = false;
  std::vector<std::string> cancels_;
};

sample_request tiny_request() {
  sample_request r;
  r.prompt_ids = {1, 2, 3};
  r.prompt_len = 3;
  r.output_len = 4;
  return r;
}

// Submits the requests at once and waits for every outcome (the client's own deadline must end them).
std::vector<request_outcome> run_all(serve_client& client, int n) {
  std::vector<std::future<request_outcome>> fs;
  for (int i = 0; i < n; ++i) {
    auto p = std::make_shared<std::promise<request_outcome>>();
    fs.push_back(p->get_future());
    client.submit(tiny_request(), [p](request_outcome o) { p->set_value(std::move(o)); });
  }
  std::vector<request_outcome> outs;
  for (auto& f : fs) {
    if (f.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      ADD_FAILURE() << "request r" << outs.size() << " hung";
      outs.emplace_back();
      continue;
    }
    outs.push_back(f.get());
  }
  return outs;
}

client_options short_deadline(const std::string& url, backend_kind b) {
  client_options o;
  o.server = parse_base_url(url);
  o.backend = b;
  o.ws_connections = 1;
  o.request_timeout = std::chrono::milliseconds(300);  // the silence timeout stays at 300 s
  return o;
}

TEST(BenchServeClient, WsRequestWhoseFinalFrameNeverComesFailsAtItsDeadlineAndIsCancelled) {
  stalling_server server(stalling_server::kind::ws, {"r1"});
  std::vector<request_outcome> outs;
  {
    serve_client client(short_deadline(server.url(), backend_kind::ws));
    outs = run_all(client, 3);  // r0, r1, r2 on one socket; only r1 ends
  }
  ASSERT_EQ(outs.size(), 3u);
  EXPECT_TRUE(outs[1].success) << outs[1].error;
  for (int i : {0, 2}) {
    const auto& o = outs[i];
    EXPECT_FALSE(o.success);
    EXPECT_NE(o.error.find("request r" + std::to_string(i) + " (ws backend) timed out"), std::string::npos)
        << o.error;
    EXPECT_NE(o.error.find("1 output chunks"), std::string::npos) << o.error;
    EXPECT_GE(o.latency_ms, 300.0);
    EXPECT_LT(o.latency_ms, 10000.0);
  }
  // The server is told to stop the requests the client gave up on, and nothing else.
  auto cancels = server.cancels();
  std::sort(cancels.begin(), cancels.end());
  EXPECT_EQ(cancels, (std::vector<std::string>{"r0", "r2"}));
  // Counted as failures, as vLLM's benchmark_serving counts them: in nothing but `failed`.
  const run_summary s = summarize_run(outs, 1.0, {});
  EXPECT_EQ(s.completed, 1);
  EXPECT_EQ(s.failed, 2);
  EXPECT_EQ(s.total_output_tokens, 1);
}

// The socket stays busy with keep-alive pings (the client's idle timeout is --timeout too), so the
// silence of one request is timed per request.
TEST(BenchServeClient, WsRequestThatGoesSilentFailsAfterTimeoutThoughPingsKeepTheSocketAlive) {
  stalling_server server(stalling_server::kind::ws, {});
  std::vector<request_outcome> outs;
  {
    client_options o = short_deadline(server.url(), backend_kind::ws);
    o.request_timeout = std::chrono::minutes(10);
    o.timeout = std::chrono::seconds(1);
    serve_client client(o);
    outs = run_all(client, 1);
  }
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_FALSE(outs[0].success);
  EXPECT_NE(outs[0].error.find("request r0 (ws backend) timed out: nothing came for it for 1 s (--timeout)"),
            std::string::npos)
      << outs[0].error;
  EXPECT_GE(outs[0].latency_ms, 1000.0);
  EXPECT_LT(outs[0].latency_ms, 10000.0);
  EXPECT_EQ(server.cancels(), (std::vector<std::string>{"r0"}));
}

TEST(BenchServeClient, OpenaiRequestWhoseStreamNeverEndsFailsAtItsDeadline) {
  stalling_server server(stalling_server::kind::openai, {});
  std::vector<request_outcome> outs;
  {
    serve_client client(short_deadline(server.url(), backend_kind::openai));
    outs = run_all(client, 1);
  }
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_FALSE(outs[0].success);
  EXPECT_NE(outs[0].error.find("request r0 (openai backend) timed out"), std::string::npos) << outs[0].error;
  EXPECT_NE(outs[0].error.find("1 output chunks"), std::string::npos) << outs[0].error;
  EXPECT_GE(outs[0].latency_ms, 300.0);
  EXPECT_LT(outs[0].latency_ms, 10000.0);
  server.cancels();  // the server saw the connection close
}

}  // namespace
}  // namespace troupe::cli::bench_serve
