// Seeds for tests that draw fresh random inputs on every run. TROUPE_FRESH_SEED(name) declares
// `const uint32_t name`, taken from TROUPE_TEST_SEED when that is set (to replay a failure) and from
// std::random_device otherwise, and adds it to every failure message in the enclosing scope.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <random>

namespace troupe::test {

inline uint32_t fresh_seed() {
  if (const char* e = std::getenv("TROUPE_TEST_SEED"); e != nullptr && *e != '\0')
    return static_cast<uint32_t>(std::strtoul(e, nullptr, 10));
  return std::random_device{}();
}

}  // namespace troupe::test

#define TROUPE_FRESH_SEED(name)                       \
  const uint32_t name = ::troupe::test::fresh_seed(); \
  SCOPED_TRACE(::testing::Message() << "seed " << name << " (TROUPE_TEST_SEED=" << name << " replays it)")
