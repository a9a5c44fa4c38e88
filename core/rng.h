// Counter-based random numbers for sampling: every draw is a pure function of (seed, counter, stream),
// so the token drawn for output position k of a request depends only on (seed, k). Batching,
// preemption and recompute cannot shift the stream, and a CUDA kernel including this header draws the
// very same numbers (no std:: engines, no state, everything inline and host/device).
//
// The generator is Philox4x32-10 (Salmon et al., "Parallel Random Numbers: As Easy as 1, 2, 3", SC11),
// checked against the Random123 known-answer vectors in tests/core/test_rng.cpp.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace troupe::rng {

struct philox4x32_block {
  uint32_t v[4];
};
struct philox4x32_key {
  uint32_t v[2];
};

namespace detail {
constexpr uint32_t philox_m0 = 0xD2511F53u;  // multipliers from the Philox paper
constexpr uint32_t philox_m1 = 0xCD9E8D57u;
constexpr uint32_t philox_w0 = 0x9E3779B9u;  // Weyl key increments (golden ratio, sqrt(3) - 1)
constexpr uint32_t philox_w1 = 0xBB67AE85u;

TROUPE_HOST_DEVICE inline philox4x32_block philox4x32_round(philox4x32_block c, philox4x32_key k) {
  const uint64_t p0 = static_cast<uint64_t>(philox_m0) * c.v[0];
  const uint64_t p1 = static_cast<uint64_t>(philox_m1) * c.v[2];
  philox4x32_block out;
  out.v[0] = static_cast<uint32_t>(p1 >> 32) ^ c.v[1] ^ k.v[0];
  out.v[1] = static_cast<uint32_t>(p1);
  out.v[2] = static_cast<uint32_t>(p0 >> 32) ^ c.v[3] ^ k.v[1];
  out.v[3] = static_cast<uint32_t>(p0);
  return out;
}
}  // namespace detail

// Philox4x32 with `rounds` rounds (10 is the standard, crush-resistant choice; 7 is kept for the
// known-answer tests). The key is bumped between rounds, as in Random123.
TROUPE_HOST_DEVICE inline philox4x32_block philox4x32(philox4x32_block ctr, philox4x32_key key,
                                                      int rounds = 10) {
  for (int r = 0; r < rounds; ++r) {
    if (r > 0) {
      key.v[0] += detail::philox_w0;
      key.v[1] += detail::philox_w1;
    }
    ctr = detail::philox4x32_round(ctr, key);
  }
  return ctr;
}

// The 128 random bits for (seed, counter, stream): the counter fills the low half of the Philox block
// and the stream the high half, the seed is the key. `stream` separates independent uses of one seed
// (e.g. the n choices of one request) without any chance of overlap.
TROUPE_HOST_DEVICE inline philox4x32_block random_block(uint64_t seed, uint64_t counter,
                                                        uint64_t stream = 0) {
  philox4x32_block ctr = {{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32),
                           static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)}};
  philox4x32_key key = {{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}};
  return philox4x32(ctr, key, 10);
}

TROUPE_HOST_DEVICE inline uint64_t random_u64(uint64_t seed, uint64_t counter, uint64_t stream = 0) {
  const philox4x32_block b = random_block(seed, counter, stream);
  return (static_cast<uint64_t>(b.v[1]) << 32) | b.v[0];
}

// Uniform in [0, 1) with 24 random bits: every value is exactly representable, and 1.0 never appears
// (rounding a 32-bit value to float could produce it).
TROUPE_HOST_DEVICE inline float uniform_float(uint64_t seed, uint64_t counter, uint64_t stream = 0) {
  const philox4x32_block b = random_block(seed, counter, stream);
  return static_cast<float>(b.v[0] >> 8) * (1.0f / 16777216.0f);
}

// Uniform in [0, 1) with 53 random bits (the mantissa of a double).
TROUPE_HOST_DEVICE inline double uniform_double(uint64_t seed, uint64_t counter, uint64_t stream = 0) {
  return static_cast<double>(random_u64(seed, counter, stream) >> 11) * (1.0 / 9007199254740992.0);
}

// A new seed for sub-stream `index` of `seed` (e.g. choice i of an n > 1 request): distinct indices give
// unrelated seeds. Uses a stream value no sampling draw uses.
TROUPE_HOST_DEVICE inline uint64_t derive_seed(uint64_t seed, uint64_t index) {
  return random_u64(seed, index, ~static_cast<uint64_t>(0));
}

}  // namespace troupe::rng
