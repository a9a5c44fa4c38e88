#include <gtest/gtest.h>

#include <thread>

#include "core/error.h"
#include "core/metrics.h"

namespace troupe::metrics {
namespace {

TEST(Metrics, CounterRendersHelpTypeAndTotal) {
  registry r;
  auto& c = r.make_counter("x_tokens_total", "Tokens.");
  c.inc();
  c.inc(41);
  EXPECT_EQ(r.render(),
            "# HELP x_tokens_total Tokens.\n"
            "# TYPE x_tokens_total counter\n"
            "x_tokens_total 42\n");
}

TEST(Metrics, CounterNameMustEndInTotal) {
  registry r;
  EXPECT_THROW(r.make_counter("x_tokens", "Tokens."), troupe::error);
  EXPECT_THROW(r.make_counter("9bad_total", "Bad."), troupe::error);
  EXPECT_THROW(r.counter_family("x_total", "X.", {"__reserved"}), troupe::error);
}

TEST(Metrics, GaugeSetIncDec) {
  registry r;
  auto& g = r.make_gauge("x_ratio", "Ratio.");
  g.set(0.5);
  g.inc(0.25);
  g.dec();
  EXPECT_DOUBLE_EQ(g.value(), -0.25);
  EXPECT_NE(r.render().find("x_ratio -0.25\n"), std::string::npos);
}

TEST(Metrics, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  registry r;
  auto& h = r.make_histogram("x_seconds", "Latency.", {0.1, 1, 10});
  h.observe(0.05);
  h.observe(0.1);  // le is inclusive
  h.observe(5);
  h.observe(100);
  EXPECT_EQ(r.render(),
            "# HELP x_seconds Latency.\n"
            "# TYPE x_seconds histogram\n"
            "x_seconds_bucket{le=\"0.1\"} 2\n"
            "x_seconds_bucket{le=\"1\"} 2\n"
            "x_seconds_bucket{le=\"10\"} 3\n"
            "x_seconds_bucket{le=\"+Inf\"} 4\n"
            "x_seconds_sum 105.15\n"
            "x_seconds_count 4\n");
}

TEST(Metrics, HistogramRejectsUnsortedBounds) {
  registry r;
  EXPECT_THROW(r.make_histogram("y_seconds", "Y.", {1, 0.5}), troupe::error);
}

TEST(Metrics, LabelsAreEscapedAndKeptInCreationOrder) {
  registry r;
  auto& fam = r.counter_family("x_requests_total", "Requests\nby route.", {"route", "status"});
  fam.with({"/b", "200"}).inc(2);
  fam.with({"a\"\\\nb", "500"}).inc();
  fam.with({"/b", "200"}).inc();
  EXPECT_EQ(r.render(),
            "# HELP x_requests_total Requests\\nby route.\n"
            "# TYPE x_requests_total counter\n"
            "x_requests_total{route=\"/b\",status=\"200\"} 3\n"
            "x_requests_total{route=\"a\\\"\\\\\\nb\",status=\"500\"} 1\n");
  EXPECT_THROW(fam.with({"only-one"}), troupe::error);
}

TEST(Metrics, LabelledHistogramPutsLeLast) {
  registry r;
  auto& h = r.histogram_family("x_step_seconds", "Step.", {1}, {"kind"}).with({"decode"});
  h.observe(0.5);
  const std::string text = r.render();
  EXPECT_NE(text.find("x_step_seconds_bucket{kind=\"decode\",le=\"1\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("x_step_seconds_count{kind=\"decode\"} 1\n"), std::string::npos) << text;
}

TEST(Metrics, ReRegistrationReturnsSameFamilyAndClashesThrow) {
  registry r;
  auto& a = r.make_counter("x_total", "X.");
  auto& b = r.make_counter("x_total", "X.");
  EXPECT_EQ(&a, &b);
  EXPECT_THROW(r.make_gauge("x_total", "X."), troupe::error);
  EXPECT_THROW(r.counter_family("x_total", "X.", {"l"}), troupe::error);
}

TEST(Metrics, FormatValue) {
  EXPECT_EQ(format_value(0.1), "0.1");
  EXPECT_EQ(format_value(1), "1");
  EXPECT_EQ(format_value(2.5e-4), "0.00025");
  EXPECT_EQ(format_value(1.0 / 0.0), "+Inf");
  EXPECT_EQ(format_value(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(format_value(0.0 / 0.0), "NaN");
}

TEST(Metrics, ConcurrentIncrementsAreNotLost) {
  registry r;
  auto& c = r.make_counter("x_total", "X.");
  auto& h = r.make_histogram("x_seconds", "X.", {1});
  auto& g = r.make_gauge("x_gauge", "X.");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.inc();
        h.observe(0.5);
        g.inc();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.value(), 40000u);
  EXPECT_EQ(h.count(), 40000u);
  EXPECT_DOUBLE_EQ(h.sum(), 20000);
  EXPECT_DOUBLE_EQ(g.value(), 40000);
}

TEST(Metrics, EngineMetricsRegisterTheDocumentedNames) {
  auto& m = troupe::global_engine_metrics();
  m.ttft.observe(0.01);
  m.requests_finished("stop").inc();
  m.requests_finished("other").inc();
  EXPECT_EQ(&m.requests_finished("length"), &m.requests.with({"length"}));
  const std::string text = troupe::global_metrics().render();
  for (const char* name :
       {"troupe_time_to_first_token_seconds", "troupe_inter_token_latency_seconds",
        "troupe_e2e_request_latency_seconds", "troupe_request_queue_time_seconds",
        "troupe_step_duration_seconds", "troupe_prompt_tokens_total", "troupe_generation_tokens_total",
        "troupe_requests_total", "troupe_prefix_cache_hits_total", "troupe_prefix_cache_queries_total",
        "troupe_preemptions_total", "troupe_requests_running", "troupe_requests_waiting",
        "troupe_kv_cache_usage_ratio", "troupe_build_info"}) {
    EXPECT_NE(text.find(std::string("# TYPE ") + name + " "), std::string::npos) << name;
  }
  EXPECT_NE(text.find("troupe_requests_total{finish_reason=\"other\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("troupe_build_info{version=\"" TROUPE_VERSION "\"} 1\n"), std::string::npos);
}

}  // namespace
}  // namespace troupe::metrics
