// Per-sequence block tables over one block_pool: prefix-cache matching for new sequences, allocation
// (with copy-on-write of shared partial blocks), hash registration of newly full blocks, fork for n > 1,
// and freeing. Used by the scheduler, which plans a step (allocate) and commits it after the worker ran
// (commit).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "core/kv/block_pool.h"

namespace troupe {

struct block_copy {
  int32_t src;
  int32_t dst;
};

class kv_manager {
 public:
  kv_manager(int32_t num_blocks, int32_t block_size, bool prefix_caching);
  kv_manager(const kv_manager&) = delete;  // find() caches a pointer into seqs_
  kv_manager& operator=(const kv_manager&) = delete;

  int32_t block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  block_pool& pool() { return pool_; }
  const block_pool& pool() const { return pool_; }

  // Registers a sequence whose first `tokens.size()` tokens must end up in the cache, and takes every
  // leading full block already cached. Returns the number of cached tokens: a multiple of block_size,
  // at most tokens.size() - 1 (the last token is always computed, since its logits are needed).
  // count: add the lookup to the hit/query counters (false when retrying an admission that failed).
  int32_t add_sequence(int64_t seq, const std::vector<int32_t>& tokens, bool count = true);

  // Blocks a call to allocate(seq, num_computed, num_tokens) would take from the pool.
  int32_t blocks_needed(int64_t seq, int32_t num_computed, int32_t num_tokens) const;

  // Makes the table cover num_tokens tokens for a step that writes positions [num_computed, num_tokens):
  // appends fresh blocks, and replaces any shared block the write touches by a private copy (the copy is
  // appended to `copies` for the worker to perform before the step). Returns false and changes nothing
  // when the pool cannot supply the blocks.
  bool allocate(int64_t seq, int32_t num_computed, int32_t num_tokens, std::vector<block_copy>& copies);

  // Tokens [0, num_computed) are in the cache: registers the hashes of blocks that became full.
  void commit(int64_t seq, const std::vector<int32_t>& tokens, int32_t num_computed);

  // child shares every block of parent (ref_count += 1 each).
  void fork(int64_t parent, int64_t child);

  // Releases the sequence's blocks, last block first so that a prefix's head outlives its tail in the
  // LRU; cached full blocks become evictable.
  void free(int64_t seq);

  bool has(int64_t seq) const { return seqs_.count(seq) > 0; }
  const std::vector<int32_t>& block_table(int64_t seq) const;
  int32_t num_sequences() const { return static_cast<int32_t>(seqs_.size()); }

  uint64_t prefix_queries() const { return queries_; }  // tokens looked up
  uint64_t prefix_hits() const { return hits_; }        // tokens found cached

 private:
  struct seq_blocks {
    std::vector<int32_t> table;
    std::vector<uint64_t> hashes;  // hash of each full block registered or matched so far
  };
  const seq_blocks& get(int64_t seq) const;
  seq_blocks& find(int64_t seq) const;

  block_pool pool_;
  int32_t block_size_;
  bool prefix_caching_;
  std::unordered_map<int64_t, seq_blocks> seqs_;
  mutable int64_t last_id_ = 0;         // find(): the last sequence looked up ...
  mutable seq_blocks* last_ = nullptr;  // ... and its entry (nullptr: none)
  uint64_t queries_ = 0, hits_ = 0;
};

}  // namespace troupe
