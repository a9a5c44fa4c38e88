#include <gtest/gtest.h>

#include <array>
#include <bitset>
#include <random>
#include <set>
#include <string>

#include "core/rng.h"
#include "tests/common/test_seed.h"

namespace troupe::rng {
namespace {

struct philox_kat {
  int rounds;
  std::array<uint32_t, 4> ctr;
  std::array<uint32_t, 2> key;
  std::array<uint32_t, 4> expected;
};

// From Random123's examples/kat_vectors (D. E. Shaw Research), the philox4x32 lines.
const philox_kat kPhiloxKats[] = {
    {7, {0, 0, 0, 0}, {0, 0}, {0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48}},
    {7,
     {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662}},
    {7,
     {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a}},
    {10, {0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {10,
     {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {10,
     {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

TEST(rng, philox4x32_known_answers) {
  for (const auto& kat : kPhiloxKats) {
    philox4x32_block ctr = {{kat.ctr[0], kat.ctr[1], kat.ctr[2], kat.ctr[3]}};
    philox4x32_key key = {{kat.key[0], kat.key[1]}};
    const philox4x32_block out = philox4x32(ctr, key, kat.rounds);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(out.v[i], kat.expected[i])
          << "rounds " << kat.rounds << " word " << i << " ctr0 " << std::hex << kat.ctr[0];
    }
  }
}

TEST(rng, random_block_maps_seed_counter_stream_into_philox_words) {
  // counter -> ctr words 0,1; stream -> ctr words 2,3; seed -> key. Checked against the third KAT.
  const uint64_t counter = 0x85a308d3243f6a88ull, stream = 0x0370734413198a2eull;
  const uint64_t seed = 0x299f31d0a4093822ull;
  const philox4x32_block b = random_block(seed, counter, stream);
  EXPECT_EQ(b.v[0], 0xd16cfe09u);
  EXPECT_EQ(b.v[3], 0x24126ea1u);
  EXPECT_EQ(random_u64(seed, counter, stream), 0x94fdcceb'd16cfe09ull);
  EXPECT_FLOAT_EQ(uniform_float(seed, counter, stream), static_cast<float>(0xd16cfe09u >> 8) / 16777216.0f);
}

TEST(rng, pure_function_of_seed_and_counter) {
  TROUPE_FRESH_SEED(gen_seed);
  std::mt19937_64 gen(gen_seed);
  for (int i = 0; i < 100; ++i) {
    const uint64_t seed = gen(), counter = gen();
    EXPECT_EQ(random_u64(seed, counter), random_u64(seed, counter));
    EXPECT_EQ(uniform_double(seed, counter), uniform_double(seed, counter));
    // Neighbouring seeds, counters and streams give unrelated values.
    EXPECT_NE(random_u64(seed, counter), random_u64(seed ^ 1, counter));
    EXPECT_NE(random_u64(seed, counter), random_u64(seed, counter + 1));
    EXPECT_NE(random_u64(seed, counter, 0), random_u64(seed, counter, 1));
  }
}

TEST(rng, uniforms_lie_in_unit_interval_and_are_uniform) {
  const uint64_t seed = ::troupe::test::fresh_seed64();
  constexpr int kBuckets = 100, kDraws = 200000;
  std::array<int, kBuckets> f_hist{}, d_hist{};
  double f_sum = 0;
  for (int i = 0; i < kDraws; ++i) {
    const float f = uniform_float(seed, i);
    const double d = uniform_double(seed, i, 7);
    ASSERT_GE(f, 0.0f);
    ASSERT_LT(f, 1.0f);
    ASSERT_GE(d, 0.0);
    ASSERT_LT(d, 1.0);
    f_sum += f;
    ++f_hist[static_cast<int>(f * kBuckets)];
    ++d_hist[static_cast<int>(d * kBuckets)];
  }
  // Chi-square with 99 degrees of freedom: mean 99, sd 14. 200 is > 7 sd out; a broken mixer that
  // leaks the sequential counter lands in a handful of buckets and scores in the hundreds of thousands.
  const double expected = static_cast<double>(kDraws) / kBuckets;
  double f_chi = 0, d_chi = 0;
  for (int b = 0; b < kBuckets; ++b) {
    f_chi += (f_hist[b] - expected) * (f_hist[b] - expected) / expected;
    d_chi += (d_hist[b] - expected) * (d_hist[b] - expected) / expected;
  }
  EXPECT_LT(f_chi, 200.0) << "seed " << seed;
  EXPECT_LT(d_chi, 200.0) << "seed " << seed;
  EXPECT_NEAR(f_sum / kDraws, 0.5, 0.005) << "seed " << seed;  // sd of the mean is 0.00065
}

TEST(rng, every_output_bit_is_balanced) {
  const uint64_t seed = ::troupe::test::fresh_seed64();
  constexpr int kDraws = 20000;
  std::array<int, 64> ones{};
  for (int i = 0; i < kDraws; ++i) {
    const uint64_t x = random_u64(seed, i);
    for (int b = 0; b < 64; ++b) ones[b] += (x >> b) & 1;
  }
  for (int b = 0; b < 64; ++b) {
    EXPECT_NEAR(ones[b], kDraws / 2, 500) << "bit " << b << " seed " << seed;  // sd is ~71
  }
}

TEST(rng, derived_seeds_are_distinct_and_deterministic) {
  const uint64_t seed = ::troupe::test::fresh_seed64();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::set<uint64_t> seen;
  for (uint64_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(derive_seed(seed, i), derive_seed(seed, i));
    seen.insert(derive_seed(seed, i));
  }
  EXPECT_EQ(seen.size(), 1000u);
  EXPECT_NE(derive_seed(seed, 0), seed);
}

}  // namespace
}  // namespace troupe::rng
