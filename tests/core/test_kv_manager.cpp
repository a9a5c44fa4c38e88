#include <gtest/gtest.h>

#include <numeric>
#include <optional>
#include <vector>

#include "core/error.h"
#include "core/kv/kv_manager.h"

namespace troupe {
namespace {

using ids = std::vector<int32_t>;

ids iota_tokens(int32_t n, int32_t first = 100) {
  ids t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

uint64_t chain_hash(const ids& tokens, int32_t block_size, int32_t num_blocks) {
  uint64_t h = kRootBlockHash;
  for (int32_t i = 0; i < num_blocks; ++i) h = block_hash(h, tokens.data() + i * block_size, block_size);
  return h;
}

bool allocate(kv_manager& kv, int64_t seq, int32_t from, int32_t to) {
  std::vector<block_copy> copies;
  const bool ok = kv.allocate(seq, from, to, copies);
  EXPECT_TRUE(copies.empty()) << "unexpected copy-on-write for sequence " << seq;
  return ok;
}

TEST(KvManager, PrefixMatchTakesOnlyFullBlocksAndNeverTheLastToken) {
  kv_manager kv(8, 16, true);
  EXPECT_EQ(kv.block_size(), 16);
  EXPECT_TRUE(kv.prefix_caching());
  const ids t33 = iota_tokens(33);
  EXPECT_EQ(kv.add_sequence(1, t33), 0);  // cold cache
  EXPECT_EQ(kv.prefix_queries(), 33u);
  EXPECT_EQ(kv.prefix_hits(), 0u);
  EXPECT_TRUE(kv.block_table(1).empty());
  ASSERT_TRUE(allocate(kv, 1, 0, 33));
  EXPECT_EQ(kv.block_table(1), (ids{0, 1, 2}));
  kv.commit(1, t33, 33);
  EXPECT_EQ(kv.pool().hash_of(0), std::optional<uint64_t>(chain_hash(t33, 16, 1)));
  EXPECT_EQ(kv.pool().hash_of(1), std::optional<uint64_t>(chain_hash(t33, 16, 2)));
  EXPECT_FALSE(kv.pool().hash_of(2).has_value());  // partial block: never cached
  EXPECT_EQ(kv.pool().num_blocks_cached(), 2);

  // 32 tokens: two full blocks are cached, but the last token must be computed -> only 1 block.
  const ids t32(t33.begin(), t33.begin() + 32);
  EXPECT_EQ(kv.add_sequence(2, t32), 16);
  EXPECT_EQ(kv.block_table(2), (ids{0}));
  EXPECT_EQ(kv.pool().ref_count(0), 2);
  EXPECT_EQ(kv.pool().ref_count(1), 1);
  EXPECT_EQ(kv.prefix_queries(), 65u);
  EXPECT_EQ(kv.prefix_hits(), 16u);

  // 33 tokens: both full blocks.
  EXPECT_EQ(kv.add_sequence(3, t33), 32);
  EXPECT_EQ(kv.block_table(3), (ids{0, 1}));
  EXPECT_EQ(kv.pool().ref_count(0), 3);
  EXPECT_EQ(kv.pool().ref_count(1), 2);
  EXPECT_EQ(kv.prefix_queries(), 98u);
  EXPECT_EQ(kv.prefix_hits(), 48u);

  // A difference inside the second block stops the match after the first.
  ids t_diff = t33;
  t_diff[20] = 7;
  EXPECT_EQ(kv.add_sequence(4, t_diff), 16);
  EXPECT_EQ(kv.block_table(4), (ids{0}));
  // A difference in the first block: no match at all, even though block 2's tokens are equal
  // (the hash chains in everything before it).
  ids t_head = t33;
  t_head[0] = 7;
  EXPECT_EQ(kv.add_sequence(5, t_head), 0);
  EXPECT_TRUE(kv.block_table(5).empty());
  // 16 tokens or fewer never match (the last token is inside the only block).
  EXPECT_EQ(kv.add_sequence(6, ids(t33.begin(), t33.begin() + 16)), 0);
  EXPECT_EQ(kv.add_sequence(7, ids(t33.begin(), t33.begin() + 17)), 16);
  EXPECT_EQ(kv.add_sequence(8, {}), 0);
  EXPECT_EQ(kv.prefix_queries(), 98u + 33 + 33 + 16 + 17);
  EXPECT_EQ(kv.prefix_hits(), 48u + 16 + 16);
  EXPECT_EQ(kv.num_sequences(), 8);
  EXPECT_EQ(kv.pool().ref_count(0), 5);
  EXPECT_NO_THROW(kv.pool().check_invariants());
}

TEST(KvManager, SecondSequenceWithSamePrefixGetsSameBlockIds) {
  kv_manager kv(6, 4, true);
  const ids t = iota_tokens(9);
  EXPECT_EQ(kv.add_sequence(1, t), 0);
  ASSERT_TRUE(allocate(kv, 1, 0, 9));
  EXPECT_EQ(kv.block_table(1), (ids{0, 1, 2}));
  kv.commit(1, t, 9);
  EXPECT_EQ(kv.pool().num_blocks_cached(), 2);

  EXPECT_EQ(kv.add_sequence(2, t), 8);
  EXPECT_EQ(kv.block_table(2), (ids{0, 1}));
  EXPECT_EQ(kv.blocks_needed(2, 8, 9), 1);
  ASSERT_TRUE(allocate(kv, 2, 8, 9));
  EXPECT_EQ(kv.block_table(2), (ids{0, 1, 3}));
  EXPECT_EQ(kv.pool().ref_count(0), 2);
  EXPECT_EQ(kv.pool().ref_count(1), 2);
  EXPECT_EQ(kv.pool().ref_count(2), 1);
  EXPECT_EQ(kv.pool().ref_count(3), 1);
  EXPECT_EQ(kv.pool().num_blocks_used(), 4);
  EXPECT_NO_THROW(kv.pool().check_invariants());

  // Both finish: the cached blocks stay evictable and serve a third sequence; the partial ones are free.
  kv.free(1);
  kv.free(2);
  EXPECT_EQ(kv.num_sequences(), 0);
  EXPECT_EQ(kv.pool().num_blocks_used(), 0);
  EXPECT_EQ(kv.pool().num_blocks_evictable(), 2);
  EXPECT_EQ(kv.add_sequence(3, t), 8);
  EXPECT_EQ(kv.block_table(3), (ids{0, 1}));
  EXPECT_EQ(kv.pool().num_blocks_evictable(), 0);
  EXPECT_NO_THROW(kv.pool().check_invariants());
}

TEST(KvManager, CommitRegistersBlocksAsTheyBecomeFull) {
  kv_manager kv(4, 4, true);
  const ids t = iota_tokens(10);
  kv.add_sequence(1, t);
  ASSERT_TRUE(allocate(kv, 1, 0, 6));
  EXPECT_EQ(kv.block_table(1), (ids{0, 1}));
  kv.commit(1, t, 3);  // nothing full yet
  EXPECT_EQ(kv.pool().num_blocks_cached(), 0);
  kv.commit(1, t, 6);
  EXPECT_EQ(kv.pool().hash_of(0), std::optional<uint64_t>(chain_hash(t, 4, 1)));
  EXPECT_FALSE(kv.pool().hash_of(1).has_value());
  ASSERT_TRUE(allocate(kv, 1, 6, 10));
  EXPECT_EQ(kv.block_table(1), (ids{0, 1, 2}));
  kv.commit(1, t, 10);
  EXPECT_EQ(kv.pool().hash_of(1), std::optional<uint64_t>(chain_hash(t, 4, 2)));
  EXPECT_FALSE(kv.pool().hash_of(2).has_value());
  EXPECT_EQ(kv.pool().num_blocks_cached(), 2);
  kv.commit(1, t, 10);  // idempotent
  EXPECT_EQ(kv.pool().num_blocks_cached(), 2);
  EXPECT_NO_THROW(kv.pool().check_invariants());

  // Without prefix caching nothing is looked up, counted or registered.
  kv_manager off(4, 4, false);
  EXPECT_EQ(off.add_sequence(1, t), 0);
  ASSERT_TRUE(allocate(off, 1, 0, 10));
  off.commit(1, t, 10);
  EXPECT_EQ(off.pool().num_blocks_cached(), 0);
  EXPECT_EQ(off.prefix_queries(), 0u);
  EXPECT_EQ(off.prefix_hits(), 0u);
  off.free(1);
  EXPECT_EQ(off.pool().num_blocks_evictable(), 0);
  EXPECT_EQ(off.pool().num_blocks_free(), 4);
}

TEST(KvManager, AllocateAppendsExactIdsAndFailsWithoutChanges) {
  kv_manager kv(4, 4, false);
  kv.add_sequence(1, iota_tokens(9));
  kv.add_sequence(2, iota_tokens(8));
  EXPECT_EQ(kv.blocks_needed(1, 0, 9), 3);
  EXPECT_EQ(kv.blocks_needed(1, 0, 0), 0);
  ASSERT_TRUE(allocate(kv, 1, 0, 5));
  EXPECT_EQ(kv.block_table(1), (ids{0, 1}));
  EXPECT_EQ(kv.blocks_needed(1, 5, 9), 1);
  ASSERT_TRUE(allocate(kv, 1, 5, 9));
  EXPECT_EQ(kv.block_table(1), (ids{0, 1, 2}));
  EXPECT_EQ(kv.blocks_needed(1, 9, 12), 0);  // fits in the last block
  ASSERT_TRUE(allocate(kv, 1, 9, 12));
  EXPECT_EQ(kv.block_table(1), (ids{0, 1, 2}));

  // Sequence 2 needs 2 blocks, 1 is left: refused, nothing taken.
  EXPECT_EQ(kv.blocks_needed(2, 0, 8), 2);
  std::vector<block_copy> copies;
  EXPECT_FALSE(kv.allocate(2, 0, 8, copies));
  EXPECT_TRUE(copies.empty());
  EXPECT_TRUE(kv.block_table(2).empty());
  EXPECT_EQ(kv.pool().num_blocks_free(), 1);
  EXPECT_EQ(kv.pool().num_blocks_used(), 3);
  ASSERT_TRUE(allocate(kv, 2, 0, 4));
  EXPECT_EQ(kv.block_table(2), (ids{3}));
  EXPECT_FALSE(kv.allocate(1, 12, 13, copies));
  EXPECT_EQ(kv.block_table(1), (ids{0, 1, 2}));
  EXPECT_TRUE(copies.empty());
  EXPECT_THROW(kv.allocate(1, 5, 4, copies), error);  // num_computed > num_tokens
  EXPECT_NO_THROW(kv.pool().check_invariants());
}

TEST(KvManager, ForkSharesBlocksAndFirstWriterCopiesSharedPartialBlock) {
  kv_manager kv(8, 4, false);
  kv.add_sequence(1, iota_tokens(6));
  ASSERT_TRUE(allocate(kv, 1, 0, 6));
  EXPECT_EQ(kv.block_table(1), (ids{0, 1}));
  kv.fork(1, 2);
  kv.fork(1, 3);
  EXPECT_EQ(kv.block_table(2), (ids{0, 1}));
  EXPECT_EQ(kv.block_table(3), (ids{0, 1}));
  EXPECT_EQ(kv.pool().ref_count(0), 3);
  EXPECT_EQ(kv.pool().ref_count(1), 3);
  EXPECT_EQ(kv.pool().num_blocks_used(), 2);
  EXPECT_NO_THROW(kv.pool().check_invariants());

  // Writing position 6 touches shared block 1: a private copy.
  EXPECT_EQ(kv.blocks_needed(1, 6, 7), 1);
  std::vector<block_copy> copies;
  ASSERT_TRUE(kv.allocate(1, 6, 7, copies));
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, 1);
  EXPECT_EQ(copies[0].dst, 2);
  EXPECT_EQ(kv.block_table(1), (ids{0, 2}));
  EXPECT_EQ(kv.pool().ref_count(1), 2);
  EXPECT_EQ(kv.pool().ref_count(2), 1);
  EXPECT_EQ(kv.pool().ref_count(0), 3);  // the full block is read, not written: still shared

  // Second writer: block 1 is still shared with 3 -> copy again, into block 3.
  copies.clear();
  ASSERT_TRUE(kv.allocate(2, 6, 7, copies));
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, 1);
  EXPECT_EQ(copies[0].dst, 3);
  EXPECT_EQ(kv.block_table(2), (ids{0, 3}));
  EXPECT_EQ(kv.pool().ref_count(1), 1);

  // Last writer owns block 1 alone now and writes in place, also into a fresh block (write 6..9).
  EXPECT_EQ(kv.blocks_needed(3, 6, 9), 1);
  copies.clear();
  ASSERT_TRUE(kv.allocate(3, 6, 9, copies));
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(kv.block_table(3), (ids{0, 1, 4}));
  EXPECT_EQ(kv.pool().num_blocks_used(), 5);
  EXPECT_NO_THROW(kv.pool().check_invariants());

  kv.free(1);
  EXPECT_EQ(kv.pool().ref_count(0), 2);
  EXPECT_EQ(kv.pool().ref_count(2), 0);
  kv.free(2);
  kv.free(3);
  EXPECT_EQ(kv.pool().num_blocks_used(), 0);
  EXPECT_EQ(kv.num_sequences(), 0);
  EXPECT_NO_THROW(kv.pool().check_invariants());
}

TEST(KvManager, CopyOnWriteCountsAgainstFreeBlocks) {
  kv_manager kv(3, 4, false);
  kv.add_sequence(1, iota_tokens(6));
  ASSERT_TRUE(allocate(kv, 1, 0, 6));
  kv.fork(1, 2);
  // Write 6..9: copy of block 1 plus one fresh block = 2, only 1 free.
  EXPECT_EQ(kv.blocks_needed(1, 6, 9), 2);
  std::vector<block_copy> copies;
  EXPECT_FALSE(kv.allocate(1, 6, 9, copies));
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(kv.block_table(1), (ids{0, 1}));
  EXPECT_EQ(kv.pool().ref_count(1), 2);
  ASSERT_TRUE(kv.allocate(1, 6, 8, copies));
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, 1);
  EXPECT_EQ(copies[0].dst, 2);
  EXPECT_EQ(kv.block_table(1), (ids{0, 2}));
  EXPECT_NO_THROW(kv.pool().check_invariants());
}

TEST(KvManager, ForkOfFullBlocksNeedsNoCopy) {
  kv_manager kv(4, 4, true);
  const ids t = iota_tokens(8);
  kv.add_sequence(1, t);
  ASSERT_TRUE(allocate(kv, 1, 0, 8));
  kv.commit(1, t, 8);
  kv.fork(1, 2);
  EXPECT_EQ(kv.blocks_needed(1, 8, 9), 1);
  ASSERT_TRUE(allocate(kv, 1, 8, 9));
  ASSERT_TRUE(allocate(kv, 2, 8, 9));
  EXPECT_EQ(kv.block_table(1), (ids{0, 1, 2}));
  EXPECT_EQ(kv.block_table(2), (ids{0, 1, 3}));
  EXPECT_EQ(kv.pool().ref_count(0), 2);
  EXPECT_EQ(kv.pool().ref_count(1), 2);
  EXPECT_NO_THROW(kv.pool().check_invariants());
}

TEST(KvManager, FreeReleasesLastBlockFirstSoTheHeadOutlivesTheTail) {
  kv_manager kv(4, 4, true);
  const ids t = iota_tokens(13);
  kv.add_sequence(1, t);
  ASSERT_TRUE(allocate(kv, 1, 0, 13));
  EXPECT_EQ(kv.block_table(1), (ids{0, 1, 2, 3}));
  kv.commit(1, t, 13);
  EXPECT_EQ(kv.pool().num_blocks_cached(), 3);
  kv.free(1);
  EXPECT_FALSE(kv.has(1));
  EXPECT_EQ(kv.pool().num_blocks_used(), 0);
  EXPECT_EQ(kv.pool().num_blocks_evictable(), 3);  // LRU [2, 1, 0]; block 3 (partial) is free
  EXPECT_NO_THROW(kv.pool().check_invariants());

  const ids other = iota_tokens(13, 500);
  EXPECT_EQ(kv.add_sequence(2, other), 0);
  ASSERT_TRUE(allocate(kv, 2, 0, 4));
  EXPECT_EQ(kv.block_table(2), (ids{3}));  // the free block first
  ASSERT_TRUE(allocate(kv, 2, 4, 8));
  EXPECT_EQ(kv.block_table(2), (ids{3, 2}));  // then the tail of the freed prefix
  EXPECT_EQ(kv.pool().num_blocks_cached(), 2);
  EXPECT_NO_THROW(kv.pool().check_invariants());

  // The head of the old prefix is still cached.
  EXPECT_EQ(kv.add_sequence(3, t), 8);
  EXPECT_EQ(kv.block_table(3), (ids{0, 1}));
  EXPECT_FALSE(allocate(kv, 2, 8, 9));  // nothing left: 0 and 1 are active again
  kv.free(3);                           // LRU [1, 0]
  ASSERT_TRUE(allocate(kv, 2, 8, 9));
  EXPECT_EQ(kv.block_table(2), (ids{3, 2, 1}));
  ASSERT_TRUE(allocate(kv, 2, 9, 13));
  EXPECT_EQ(kv.block_table(2), (ids{3, 2, 1, 0}));
  EXPECT_EQ(kv.pool().num_blocks_cached(), 0);
  EXPECT_EQ(kv.pool().num_blocks_free(), 0);
  EXPECT_NO_THROW(kv.pool().check_invariants());
}

TEST(KvManager, MisuseThrows) {
  EXPECT_THROW(kv_manager(4, 0, true), error);
  kv_manager kv(4, 4, true);
  kv.add_sequence(1, iota_tokens(3));
  EXPECT_THROW(kv.add_sequence(1, iota_tokens(3)), error);
  EXPECT_THROW(kv.block_table(2), error);
  EXPECT_THROW(kv.blocks_needed(2, 0, 1), error);
  EXPECT_THROW(kv.fork(2, 3), error);
  EXPECT_THROW(kv.fork(1, 1), error);
  kv.free(2);  // unknown: no-op
  EXPECT_TRUE(kv.has(1));
  EXPECT_FALSE(kv.has(2));
  EXPECT_NO_THROW(kv.pool().check_invariants());
}

}  // namespace
}  // namespace troupe
