// Owner of KV block ids, their reference counts and the prefix-cache hash map.
//
// A block is in exactly one state:
//   free       ref_count 0, no hash          (on free_, handed out lowest id first)
//   active     ref_count >= 1                (in some sequence's block table; may carry a hash)
//   evictable  ref_count 0, hash registered  (on the LRU list; reusable by a prefix hit until evicted)
// allocate() takes a free block, else evicts the least recently released evictable one.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <unordered_map>
#include <vector>

namespace troupe {

// Chained hash of one full block: depends on the previous block's hash and this block's token ids, so
// equal hashes mean equal prefixes (up to 64-bit collisions).
uint64_t block_hash(uint64_t parent_hash, const int32_t* tokens, int32_t n);
constexpr uint64_t kRootBlockHash = 0x9e3779b97f4a7c15ull;

class block_pool {
 public:
  explicit block_pool(int32_t num_blocks);

  int32_t num_blocks() const { return static_cast<int32_t>(blocks_.size()); }
  // Blocks an allocation can get: free plus evictable.
  int32_t num_blocks_free() const { return static_cast<int32_t>(free_.size() + lru_.size()); }
  int32_t num_blocks_used() const { return num_blocks() - num_blocks_free(); }
  int32_t num_blocks_evictable() const { return static_cast<int32_t>(lru_.size()); }
  int32_t num_blocks_cached() const { return static_cast<int32_t>(by_hash_.size()); }

  // free -> active (ref_count = 1), or evictable -> active after dropping its hash. -1 when none left.
  int32_t allocate();
  // active: ref_count += 1 (another sequence shares the block)
  void retain(int32_t id);
  // active: ref_count -= 1; at 0: -> evictable when hashed, else -> free
  void release(int32_t id);

  // Prefix cache. lookup: a cached block with this hash, made active (evictable -> active, or
  // ref_count += 1 when already active); nullopt on a miss.
  std::optional<int32_t> lookup(uint64_t hash);
  // active full block: remember its hash (no-op when the hash is already cached by another block).
  void register_hash(int32_t id, uint64_t hash);
  // Drops every cached hash (evictable blocks -> free).
  void reset_prefix_cache();

  int32_t ref_count(int32_t id) const;
  std::optional<uint64_t> hash_of(int32_t id) const;

  // Always-on invariants: every block in exactly one state, counts consistent. Throws on violation.
  void check_invariants() const;

 private:
  struct block {
    int32_t ref_count = 0;
    bool hashed = false;
    uint64_t hash = 0;
    bool in_lru = false;
    std::list<int32_t>::iterator lru_pos;
  };
  void drop_hash(int32_t id);

  std::vector<block> blocks_;
  std::vector<int32_t> free_;  // min-heap: the lowest free id is handed out first
  std::list<int32_t> lru_;     // evictable, least recently released first
  std::unordered_map<uint64_t, int32_t> by_hash_;
};

}  // namespace troupe
