// What the engine facade and the actors share: counters the facade reads without messaging, and the
// map from client ids to internal request ids.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace troupe::actors {

struct shared_state {
  std::atomic<int32_t> num_running{0};
  std::atomic<int32_t> num_waiting{0};
  std::atomic<int32_t> num_pending{0};   // submitted, not yet in the scheduler's queue
  std::atomic<int32_t> num_requests{0};  // live requests
  std::atomic<int32_t> num_blocks{0};
  std::atomic<int32_t> num_blocks_used{0};
  std::atomic<int32_t> num_sequences_in_kv{0};
  std::atomic<uint64_t> prefix_queries{0};
  std::atomic<uint64_t> prefix_hits{0};
  std::atomic<uint64_t> preemptions{0};
  std::atomic<int32_t> worker_restarts{0};
  std::atomic<bool> dead{false};
  std::atomic<bool> crash_next_step{false};
  std::atomic<uint64_t> next_rid{1};

  std::mutex ids_mu;
  std::unordered_map<std::string, uint64_t> ids;  // live client id -> rid
};

}  // namespace troupe::actors
