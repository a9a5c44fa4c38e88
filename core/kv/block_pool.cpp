#include "core/kv/block_pool.h"

#include <algorithm>
#include <functional>

#include "core/error.h"

namespace troupe {

uint64_t block_hash(uint64_t parent_hash, const int32_t* tokens, int32_t n) {
  // FNV-1a over the parent hash and the token ids, finished with a splitmix64 avalanche.
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 0x100000001b3ull;
    }
  };
  mix(parent_hash);
  mix(static_cast<uint64_t>(n));
  for (int32_t i = 0; i < n; ++i) mix(static_cast<uint32_t>(tokens[i]));
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

static int32_t checked_size(int32_t n) {
  TROUPE_CHECK_GT(n, 0);
  return n;
}

block_pool::block_pool(int32_t num_blocks) : blocks_(checked_size(num_blocks)) {
  free_.reserve(num_blocks);
  for (int32_t i = 0; i < num_blocks; ++i) free_.push_back(i);  // ascending: already a min-heap
}

void block_pool::drop_hash(int32_t id) {
  block& b = blocks_[id];
  if (!b.hashed) return;
  auto it = by_hash_.find(b.hash);
  if (it != by_hash_.end() && it->second == id) by_hash_.erase(it);
  b.hashed = false;
}

int32_t block_pool::allocate() {
  int32_t id;
  if (!free_.empty()) {
    std::pop_heap(free_.begin(), free_.end(), std::greater<int32_t>());
    id = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    id = lru_.front();  // evictable -> active: the least recently released cached block
    lru_.pop_front();
    blocks_[id].in_lru = false;
    drop_hash(id);
  } else {
    return -1;
  }
  block& b = blocks_[id];
  TROUPE_CHECK_EQ(b.ref_count, 0) << "block" << id;
  b.ref_count = 1;
  return id;
}

void block_pool::retain(int32_t id) {
  TROUPE_CHECK(id >= 0 && id < num_blocks()) << id;
  TROUPE_CHECK_GT(blocks_[id].ref_count, 0) << "block" << id;
  ++blocks_[id].ref_count;
}

void block_pool::release(int32_t id) {
  TROUPE_CHECK(id >= 0 && id < num_blocks()) << id;
  block& b = blocks_[id];
  TROUPE_CHECK_GT(b.ref_count, 0) << "block" << id;
  if (--b.ref_count > 0) return;
  if (b.hashed) {
    b.lru_pos = lru_.insert(lru_.end(), id);  // active -> evictable (most recently released last)
    b.in_lru = true;
  } else {
    free_.push_back(id);  // active -> free
    std::push_heap(free_.begin(), free_.end(), std::greater<int32_t>());
  }
}

std::optional<int32_t> block_pool::lookup(uint64_t hash) {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return std::nullopt;
  const int32_t id = it->second;
  block& b = blocks_[id];
  if (b.in_lru) {
    lru_.erase(b.lru_pos);  // evictable -> active
    b.in_lru = false;
    TROUPE_CHECK_EQ(b.ref_count, 0) << "block" << id;
  }
  ++b.ref_count;
  return id;
}

void block_pool::register_hash(int32_t id, uint64_t hash) {
  TROUPE_CHECK(id >= 0 && id < num_blocks()) << id;
  block& b = blocks_[id];
  TROUPE_CHECK_GT(b.ref_count, 0) << "block" << id;
  if (b.hashed) return;
  if (by_hash_.count(hash)) return;  // an identical block is already cached; this one stays uncached
  b.hashed = true;
  b.hash = hash;
  by_hash_[hash] = id;
}

void block_pool::reset_prefix_cache() {
  for (int32_t id : lru_) {
    blocks_[id].in_lru = false;
    free_.push_back(id);
    std::push_heap(free_.begin(), free_.end(), std::greater<int32_t>());
  }
  lru_.clear();
  for (auto& b : blocks_) b.hashed = false;
  by_hash_.clear();
}

int32_t block_pool::ref_count(int32_t id) const {
  TROUPE_CHECK(id >= 0 && id < num_blocks()) << id;
  return blocks_[id].ref_count;
}

std::optional<uint64_t> block_pool::hash_of(int32_t id) const {
  TROUPE_CHECK(id >= 0 && id < num_blocks()) << id;
  if (!blocks_[id].hashed) return std::nullopt;
  return blocks_[id].hash;
}

void block_pool::check_invariants() const {
  std::vector<int> seen(blocks_.size(), 0);
  for (int32_t id : free_) {
    TROUPE_CHECK_EQ(blocks_[id].ref_count, 0) << "free block" << id;
    TROUPE_CHECK(!blocks_[id].hashed) << "free block" << id << "has a hash";
    ++seen[id];
  }
  for (int32_t id : lru_) {
    TROUPE_CHECK_EQ(blocks_[id].ref_count, 0) << "evictable block" << id;
    TROUPE_CHECK(blocks_[id].hashed && blocks_[id].in_lru) << "evictable block" << id;
    ++seen[id];
  }
  for (size_t id = 0; id < blocks_.size(); ++id) {
    if (blocks_[id].ref_count > 0) ++seen[id];
    TROUPE_CHECK_EQ(seen[id], 1) << "block" << id << "is in" << seen[id] << "states";
  }
  for (const auto& [h, id] : by_hash_) {
    TROUPE_CHECK(blocks_[id].hashed && blocks_[id].hash == h) << "hash map entry for block" << id;
  }
}

}  // namespace troupe
