// The Unicode pieces under the tokenizer: NFC/NFD from the generated tables and Rust-compatible lossy
// UTF-8 decoding.
#include <gtest/gtest.h>

#include <random>

#include "core/unicode.h"
#include "tests/common/test_seed.h"

namespace {

using troupe::unicode::append_utf8;
using troupe::unicode::from_utf8_lossy;
using troupe::unicode::nfc;
using troupe::unicode::nfd;

std::string u(std::initializer_list<uint32_t> cps) {
  std::string s;
  for (uint32_t c : cps) append_utf8(s, c);
  return s;
}

TEST(tokenizer_unicode, nfc_known_answers) {
  EXPECT_EQ(nfc(u({'e', 0x301})), u({0xE9}));
  EXPECT_EQ(nfc(u({'A', 0x30A})), u({0xC5}));
  EXPECT_EQ(nfc(u({0x212B})), u({0xC5}));                          // singleton: ANGSTROM SIGN
  EXPECT_EQ(nfc(u({0x1E9B, 0x323})), u({0x1E9B, 0x323}));          // UAX #15 example
  EXPECT_EQ(nfc(u({'q', 0x307, 0x323})), u({'q', 0x323, 0x307}));  // reordered, nothing composes
  EXPECT_EQ(nfc(u({0x958})), u({0x915, 0x93C}));                   // composition exclusion
  EXPECT_EQ(nfc(u({0x1100, 0x1161, 0x11A8})), u({0xAC01}));        // Hangul L V T
  EXPECT_EQ(nfc(u({0xAC00, 0x11A8})), u({0xAC01}));                // Hangul LV + T
  EXPECT_EQ(nfc(u({'e', 0x323, 0x302})), u({0x1EC7}));             // ệ: two marks, both compose
  EXPECT_EQ(nfc(u({'e', 0x302, 0x323})), u({0x1EC7}));             // same after reordering
  EXPECT_EQ(nfc(u({0x301, 'e'})), u({0x301, 'e'}));                // leading mark has no starter
  EXPECT_EQ(nfc("plain ascii"), "plain ascii");
}

TEST(tokenizer_unicode, nfd_known_answers) {
  EXPECT_EQ(nfd(u({0xE9})), u({'e', 0x301}));
  EXPECT_EQ(nfd(u({0x1EC7})), u({'e', 0x323, 0x302}));
  EXPECT_EQ(nfd(u({0xAC01})), u({0x1100, 0x1161, 0x11A8}));
}

TEST(tokenizer_unicode, nfc_properties_on_random_strings) {
  // Letters, combining marks of several classes, Hangul jamo and syllables: NFC is idempotent and
  // NFC(NFD(x)) == NFC(x).
  const std::vector<uint32_t> pool = {'a',    'e',    'o',   'A',   0xE9,   0xC5,   0x300,
                                      0x301,  0x302,  0x308, 0x323, 0x327,  0x1100, 0x1161,
                                      0x11A8, 0xAC00, 0x915, 0x93C, 0x3099, 0x304B, 0x212B};
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  for (int i = 0; i < 2000; ++i) {
    std::string s;
    int n = std::uniform_int_distribution<int>(0, 8)(rng);
    for (int k = 0; k < n; ++k)
      append_utf8(s, pool[std::uniform_int_distribution<size_t>(0, pool.size() - 1)(rng)]);
    std::string c = nfc(s);
    ASSERT_EQ(nfc(c), c) << s;
    ASSERT_EQ(nfc(nfd(s)), c) << s;
    ASSERT_EQ(nfd(c), nfd(s)) << s;
  }
}

TEST(tokenizer_unicode, lossy_decoding_matches_rust) {
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(from_utf8_lossy("\xF0\x9F\x98"), r);                  // truncated: one maximal subpart
  EXPECT_EQ(from_utf8_lossy("\xC0\x80"), r + r);                  // overlong lead, stray continuation
  EXPECT_EQ(from_utf8_lossy("\xED\xA0\x80"), r + r + r);          // surrogate
  EXPECT_EQ(from_utf8_lossy("a\xF0\x9F\x98z"), "a" + r + "z");    // broken sequence, then ASCII
  EXPECT_EQ(from_utf8_lossy("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
  EXPECT_EQ(from_utf8_lossy(u({0x1F600, 0xE9})), u({0x1F600, 0xE9}));
}

TEST(tokenizer_unicode, lossy_output_is_valid_on_random_bytes) {
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  for (int i = 0; i < 2000; ++i) {
    std::string s;
    int n = std::uniform_int_distribution<int>(0, 12)(rng);
    for (int k = 0; k < n; ++k)
      s.push_back(static_cast<char>(std::uniform_int_distribution<int>(0x70, 0xFF)(rng)));
    std::string out = from_utf8_lossy(s);
    ASSERT_TRUE(troupe::unicode::is_valid_utf8(out));
    if (troupe::unicode::is_valid_utf8(s)) {
      ASSERT_EQ(out, s);
    }
  }
}

}  // namespace
