// Owner of KV block ids and their reference counts. Blocks move free -> active (allocate) and back when
// their last reference is released. (Prefix caching with evictable blocks builds on this.)
#pragma once

#include <cstdint>
#include <vector>

namespace troupe {

class block_pool {
 public:
  explicit block_pool(int32_t num_blocks);

  int32_t num_blocks() const { return static_cast<int32_t>(ref_count_.size()); }
  int32_t num_blocks_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t num_blocks_used() const { return num_blocks() - num_blocks_free(); }

  // free -> active (ref_count = 1). Returns -1 when none is free.
  int32_t allocate();
  // active: ref_count += 1 (a second sequence shares the block)
  void retain(int32_t id);
  // ref_count -= 1; at 0: active -> free
  void release(int32_t id);
  int32_t ref_count(int32_t id) const;

 private:
  std::vector<int32_t> ref_count_;
  std::vector<int32_t> free_;  // stack; lowest ids handed out first
};

}  // namespace troupe
