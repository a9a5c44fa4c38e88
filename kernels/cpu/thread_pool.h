// A fixed pool of worker threads for the CPU reference kernels. parallel_for splits [0, n) into chunks of
// at least `grain` and blocks until all are done; the calling thread works too.
#pragma once

#include <cstdint>
#include <functional>

namespace troupe::kernels::cpu {

// 0 = hardware concurrency (or TROUPE_NUM_THREADS). Takes effect for later calls.
void set_num_threads(int n);
int num_threads();

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

}  // namespace troupe::kernels::cpu
