// Seeds for tests that draw fresh random inputs on every run: each failure names its seed, and
// TROUPE_TEST_SEED=N replays it. TROUPE_FRESH_SEED(name) declares `const uint32_t name` and adds it to every
// failure message in the enclosing scope; tests with 64-bit seeds call fresh_seed64() and print it.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <random>

namespace troupe::test {

// TROUPE_TEST_SEED when set, else fresh bits (32 or 64).
inline uint64_t fresh_seed64() {
  if (const char* e = std::getenv("TROUPE_TEST_SEED"); e != nullptr && *e != '\0')
    return std::strtoull(e, nullptr, 10);
  return (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
}
inline uint32_t fresh_seed() {
  if (const char* e = std::getenv("TROUPE_TEST_SEED"); e != nullptr && *e != '\0')
    return static_cast<uint32_t>(std::strtoul(e, nullptr, 10));
  return std::random_device{}();
}

}  // namespace troupe::test

#define TROUPE_FRESH_SEED(name)                       \
  const uint32_t name = ::troupe::test::fresh_seed(); \
  SCOPED_TRACE(::testing::Message() << "seed " << name << " (TROUPE_TEST_SEED=" << name << " replays it)")
