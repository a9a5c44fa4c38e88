#include "core/kv/block_pool.h"

#include "core/error.h"

namespace troupe {

block_pool::block_pool(int32_t num_blocks) : ref_count_(num_blocks, 0) {
  TROUPE_CHECK_GT(num_blocks, 0);
  free_.reserve(num_blocks);
  for (int32_t i = num_blocks - 1; i >= 0; --i) free_.push_back(i);
}

int32_t block_pool::allocate() {
  if (free_.empty()) return -1;
  int32_t id = free_.back();
  free_.pop_back();
  TROUPE_CHECK_EQ(ref_count_[id], 0) << "block" << id;
  ref_count_[id] = 1;
  return id;
}

void block_pool::retain(int32_t id) {
  TROUPE_CHECK(id >= 0 && id < num_blocks()) << id;
  TROUPE_CHECK_GT(ref_count_[id], 0) << "block" << id;
  ++ref_count_[id];
}

void block_pool::release(int32_t id) {
  TROUPE_CHECK(id >= 0 && id < num_blocks()) << id;
  TROUPE_CHECK_GT(ref_count_[id], 0) << "block" << id;
  if (--ref_count_[id] == 0) free_.push_back(id);
}

int32_t block_pool::ref_count(int32_t id) const {
  TROUPE_CHECK(id >= 0 && id < num_blocks()) << id;
  return ref_count_[id];
}

}  // namespace troupe
