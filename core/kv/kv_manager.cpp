#include "core/kv/kv_manager.h"

#include "core/error.h"

namespace troupe {

kv_manager::kv_manager(int32_t num_blocks, int32_t block_size, bool prefix_caching)
    : pool_(num_blocks), block_size_(block_size), prefix_caching_(prefix_caching) {
  TROUPE_CHECK_GT(block_size, 0);
}

kv_manager::seq_blocks& kv_manager::find(int64_t seq) const {
  // A step looks the same sequence up several times in a row (blocks_needed, allocate, block_table):
  // remember the last hit. Map nodes never move, and free() forgets the entry it erases.
  if (last_ != nullptr && last_id_ == seq) return *last_;
  auto it = seqs_.find(seq);
  TROUPE_CHECK(it != seqs_.end()) << "unknown sequence" << seq;
  last_id_ = seq;
  last_ = const_cast<seq_blocks*>(&it->second);
  return *last_;
}

const kv_manager::seq_blocks& kv_manager::get(int64_t seq) const { return find(seq); }

const std::vector<int32_t>& kv_manager::block_table(int64_t seq) const { return get(seq).table; }

int32_t kv_manager::add_sequence(int64_t seq, const std::vector<int32_t>& tokens, bool count) {
  TROUPE_CHECK(!seqs_.count(seq)) << "sequence" << seq << "already registered";
  seq_blocks& s = seqs_[seq];
  if (!prefix_caching_ || tokens.empty()) return 0;
  if (count) queries_ += tokens.size();
  const int32_t n = static_cast<int32_t>(tokens.size());
  uint64_t parent = kRootBlockHash;
  for (int32_t i = 0; (i + 1) * block_size_ <= n - 1; ++i) {
    const uint64_t h = block_hash(parent, tokens.data() + i * block_size_, block_size_);
    auto id = pool_.lookup(h);
    if (!id) break;
    s.table.push_back(*id);
    s.hashes.push_back(h);
    parent = h;
  }
  const int32_t cached = static_cast<int32_t>(s.table.size()) * block_size_;
  if (count) hits_ += cached;
  return cached;
}

int32_t kv_manager::blocks_needed(int64_t seq, int32_t num_computed, int32_t num_tokens) const {
  const seq_blocks& s = get(seq);
  const int32_t have = static_cast<int32_t>(s.table.size());
  const int32_t want = (num_tokens + block_size_ - 1) / block_size_;
  int32_t need = want > have ? want - have : 0;
  // Shared blocks the write touches need a private copy.
  const int32_t first = num_computed / block_size_;
  for (int32_t i = first; i < have && i * block_size_ < num_tokens; ++i) {
    if (pool_.ref_count(s.table[i]) > 1) ++need;
  }
  return need;
}

bool kv_manager::allocate(int64_t seq, int32_t num_computed, int32_t num_tokens,
                          std::vector<block_copy>& copies) {
  TROUPE_CHECK_LE(num_computed, num_tokens);
  if (blocks_needed(seq, num_computed, num_tokens) > pool_.num_blocks_free()) return false;
  seq_blocks& s = find(seq);
  const int32_t have = static_cast<int32_t>(s.table.size());
  for (int32_t i = num_computed / block_size_; i < have && i * block_size_ < num_tokens; ++i) {
    const int32_t old = s.table[i];
    if (pool_.ref_count(old) > 1) {
      const int32_t fresh = pool_.allocate();  // shared -> private copy for this writer
      TROUPE_CHECK_GE(fresh, 0);
      copies.push_back({old, fresh});
      pool_.release(old);
      s.table[i] = fresh;
      if (static_cast<size_t>(i) < s.hashes.size()) s.hashes.resize(i);  // the copy is not registered
    }
  }
  const int32_t want = (num_tokens + block_size_ - 1) / block_size_;
  while (static_cast<int32_t>(s.table.size()) < want) {
    const int32_t id = pool_.allocate();
    TROUPE_CHECK_GE(id, 0);
    s.table.push_back(id);
  }
  return true;
}

void kv_manager::commit(int64_t seq, const std::vector<int32_t>& tokens, int32_t num_computed) {
  if (!prefix_caching_) return;
  seq_blocks& s = find(seq);
  TROUPE_CHECK_LE(static_cast<size_t>(num_computed), tokens.size());
  const int32_t full = std::min<int32_t>(num_computed / block_size_, static_cast<int32_t>(s.table.size()));
  for (int32_t i = static_cast<int32_t>(s.hashes.size()); i < full; ++i) {
    const uint64_t parent = i == 0 ? kRootBlockHash : s.hashes[i - 1];
    const uint64_t h = block_hash(parent, tokens.data() + i * block_size_, block_size_);
    pool_.register_hash(s.table[i], h);
    s.hashes.push_back(h);
  }
}

void kv_manager::fork(int64_t parent, int64_t child) {
  TROUPE_CHECK(!seqs_.count(child)) << "sequence" << child << "already registered";
  seq_blocks copy = get(parent);
  for (int32_t id : copy.table) pool_.retain(id);
  seqs_[child] = std::move(copy);
}

void kv_manager::free(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  const auto& table = it->second.table;
  for (auto b = table.rbegin(); b != table.rend(); ++b) pool_.release(*b);
  if (last_ == &it->second) last_ = nullptr;
  seqs_.erase(it);
}

}  // namespace troupe
