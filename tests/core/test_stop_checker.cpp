#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "core/stop_checker.h"
#include "tests/common/test_seed.h"

namespace troupe {
namespace {

TEST(stop_checker, no_stop_strings_emits_everything_at_once) {
  stop_checker sc({});
  auto u = sc.push("hello ");
  EXPECT_EQ(u.emit, "hello ");
  EXPECT_FALSE(u.stopped);
  EXPECT_EQ(sc.push("world").emit, "world");
  EXPECT_EQ(sc.flush(), "");
}

TEST(stop_checker, holds_back_a_possible_prefix_then_releases_it) {
  stop_checker sc({"STOP"});
  auto u = sc.push("abc ST");
  EXPECT_EQ(u.emit, "abc ");
  EXPECT_FALSE(u.stopped);
  EXPECT_EQ(sc.num_bytes_held(), 2u);
  u = sc.push("O");
  EXPECT_EQ(u.emit, "");
  EXPECT_EQ(sc.num_bytes_held(), 3u);
  u = sc.push("P? no, STOx");  // completes "STOP" at the start of the held text
  EXPECT_TRUE(u.stopped);
  EXPECT_EQ(u.emit, "");
  EXPECT_EQ(u.matched, "STOP");
}

TEST(stop_checker, released_prefix_when_the_text_diverges) {
  stop_checker sc({"STOP"});
  EXPECT_EQ(sc.push("x STO").emit, "x ");
  auto u = sc.push("RM");
  EXPECT_EQ(u.emit, "STORM");
  EXPECT_FALSE(u.stopped);
  EXPECT_EQ(sc.num_bytes_held(), 0u);
  // A prefix that restarts inside the held text: "SSTO" -> "S" is safe, "STO" is held.
  EXPECT_EQ(sc.push("SSTO").emit, "S");
  EXPECT_EQ(sc.flush(), "STO");
}

TEST(stop_checker, match_straddling_many_pushes) {
  stop_checker sc({"</end>"});
  std::string emitted;
  stop_update u{};
  for (std::string_view piece : {"The answer is 4", "2.<", "/e", "n", "d> trailing"}) {
    u = sc.push(piece);
    emitted += u.emit;
    if (u.stopped) break;
  }
  EXPECT_TRUE(u.stopped);
  EXPECT_EQ(u.matched, "</end>");
  EXPECT_EQ(emitted, "The answer is 42.");
  EXPECT_TRUE(sc.stopped());
  // Once stopped, nothing more comes out.
  u = sc.push("more text");
  EXPECT_EQ(u.emit, "");
  EXPECT_TRUE(u.stopped);
  EXPECT_EQ(sc.flush(), "");
}

TEST(stop_checker, text_before_the_stop_in_the_same_push_is_emitted) {
  stop_checker sc({"\n\n"});
  auto u = sc.push("line one\nline two\n\nline three");
  EXPECT_TRUE(u.stopped);
  EXPECT_EQ(u.emit, "line one\nline two");
  EXPECT_EQ(u.matched, "\n\n");
}

TEST(stop_checker, first_completed_match_wins_among_several_stop_strings) {
  stop_checker sc({"world", "lo w", "o"});
  auto u = sc.push("hello world");
  EXPECT_TRUE(u.stopped);
  EXPECT_EQ(u.matched, "o");  // ends at 5, before "lo w" (7) and "world" (11)
  EXPECT_EQ(u.emit, "hell");
  // A shorter stop inside a longer one completes first, in one push or byte by byte alike.
  stop_checker whole({"abcd", "bc"});
  u = whole.push("xabcd");
  EXPECT_EQ(u.matched, "bc");
  EXPECT_EQ(u.emit, "xa");
  stop_checker bytes({"abcd", "bc"});
  std::string emitted;
  for (char c : std::string("xabcd")) {
    u = bytes.push(std::string(1, c));
    emitted += u.emit;
    if (u.stopped) break;
  }
  EXPECT_EQ(u.matched, "bc");
  EXPECT_EQ(emitted, "xa");
}

TEST(stop_checker, same_end_prefers_the_longer_stop) {
  stop_checker sc({"bc", "abc"});
  auto u = sc.push("xxabcd");
  EXPECT_EQ(u.matched, "abc");
  EXPECT_EQ(u.emit, "xx");
  stop_checker sc2({"abc", "ab"});
  u = sc2.push("xxabcd");
  EXPECT_EQ(u.matched, "ab");  // "ab" ends first
  EXPECT_EQ(u.emit, "xx");
}

TEST(stop_checker, holds_back_the_longest_possible_prefix_over_all_stops) {
  stop_checker sc({"abcd", "cdx"});
  // Tail "abc" could start "abcd"; tail "c" could start "cdx": hold the longer.
  auto u = sc.push("zzabc");
  EXPECT_EQ(u.emit, "zz");
  u = sc.push("dq");
  EXPECT_TRUE(u.stopped);
  EXPECT_EQ(u.matched, "abcd");
  EXPECT_EQ(u.emit, "");
}

TEST(stop_checker, utf8_stop_strings_and_split_characters) {
  // "。" is E3 80 82; "é" is C3 A9.
  stop_checker sc({"。"});
  auto u = sc.push("caf\xC3");  // é split across pushes: the lone lead byte is held
  EXPECT_EQ(u.emit, "caf");
  u = sc.push("\xA9 ok\xE3\x80");  // the stop's first two bytes are held too
  EXPECT_EQ(u.emit, "\xC3\xA9 ok");
  EXPECT_FALSE(u.stopped);
  u = sc.push("\x82rest");
  EXPECT_TRUE(u.stopped);
  EXPECT_EQ(u.emit, "");
  EXPECT_EQ(u.matched, "。");
}

TEST(stop_checker, utf8_incomplete_tail_is_held_without_stop_strings) {
  stop_checker sc({});
  EXPECT_EQ(sc.push("a\xF0\x9F").emit, "a");  // first half of a 4-byte emoji
  EXPECT_EQ(sc.push("\x98").emit, "");
  EXPECT_EQ(sc.push("\x80!").emit, "\xF0\x9F\x98\x80!");
  EXPECT_EQ(sc.push("\xE2\x82").emit, "");  // incomplete euro sign at the end: flush returns it
  EXPECT_EQ(sc.flush(), "\xE2\x82");
}

TEST(stop_checker, empty_stop_string_is_rejected) { EXPECT_THROW(stop_checker({"a", ""}), troupe::error); }

// Random texts over a small alphabet (so stop strings occur and nearly occur often), cut into random
// pushes: the emitted text must equal the text up to the first match, whatever the chunking.
TEST(stop_checker, random_chunking_matches_a_whole_text_search) {
  TROUPE_FRESH_SEED(seed);
  std::mt19937 gen(seed);
  const std::string alphabet = "ab\xC3\xA9";  // includes a 2-byte character
  auto random_string = [&](int len) {
    std::string s;
    for (int i = 0; i < len; ++i) {
      const int c = std::uniform_int_distribution<int>(0, 2)(gen);
      s += c == 2 ? std::string("\xC3\xA9") : std::string(1, alphabet[c]);
    }
    return s;
  };
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<std::string> stops;
    const int num_stops = std::uniform_int_distribution<int>(1, 3)(gen);
    for (int i = 0; i < num_stops; ++i)
      stops.push_back(random_string(std::uniform_int_distribution<int>(1, 4)(gen)));
    const std::string text = random_string(std::uniform_int_distribution<int>(0, 30)(gen));

    // Reference: the match that ends first, then the one that starts first.
    size_t first = std::string::npos, first_end = std::string::npos;
    std::string first_stop;
    for (const auto& s : stops) {
      const size_t pos = text.find(s);
      if (pos == std::string::npos) continue;
      if (pos + s.size() < first_end || (pos + s.size() == first_end && pos < first)) {
        first = pos;
        first_end = pos + s.size();
        first_stop = s;
      }
    }

    stop_checker sc(stops);
    std::string emitted;
    bool stopped = false;
    std::string matched;
    for (size_t at = 0; at < text.size() && !stopped;) {
      const size_t len = std::uniform_int_distribution<size_t>(1, 5)(gen);
      auto u = sc.push(std::string_view(text).substr(at, len));
      at += len;
      emitted += u.emit;
      // Nothing emitted may be part of a stop string, i.e. beyond the first match.
      ASSERT_LE(emitted.size(), first == std::string::npos ? text.size() : first);
      stopped = u.stopped;
      matched = u.matched;
    }
    if (!stopped) emitted += sc.flush();
    const std::string expect = first == std::string::npos ? text : text.substr(0, first);
    ASSERT_EQ(emitted, expect) << "trial " << trial;
    ASSERT_EQ(stopped, first != std::string::npos);
    if (stopped) {
      ASSERT_EQ(matched, first_stop) << "trial " << trial;
    }
  }
}

TEST(stop_token, eos_and_stop_token_ids) {
  sampling_params p;
  p.stop_token_ids = {7, 9};
  EXPECT_TRUE(is_stop_token(2, p, 2));
  EXPECT_FALSE(is_stop_token(2, p, std::nullopt));
  EXPECT_FALSE(is_stop_token(3, p, 2));
  EXPECT_TRUE(is_stop_token(7, p, 2));
  EXPECT_TRUE(is_stop_token(9, p, std::nullopt));
  p.ignore_eos = true;
  EXPECT_FALSE(is_stop_token(2, p, 2));
  EXPECT_TRUE(is_stop_token(9, p, 2));  // stop_token_ids stop even with ignore_eos
  p.stop_token_ids.push_back(2);
  EXPECT_TRUE(is_stop_token(2, p, 2));  // explicitly listed eos still stops
}

}  // namespace
}  // namespace troupe
