#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace troupe::kernels::cpu {

namespace {

class pool {
 public:
  explicit pool(int n) {
    for (int i = 0; i < n - 1; ++i) workers_.emplace_back([this] { loop(); });
  }
  ~pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int64_t chunks, const std::function<void(int64_t)>& job) {
    std::unique_lock<std::mutex> run_lock(run_mu_);  // one parallel region at a time
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &job;
      chunks_ = chunks;
      next_.store(0);
      done_ = 0;
      ++generation_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(mu_);
    // Every chunk done, and every worker that woke for this region out of work(): one still inside could
    // otherwise pair this region's exhausted next_ with the next region's chunks_ and job_, run a chunk of
    // it twice and count it twice (done_ then overshoots chunks_ and the next run() waits forever).
    done_cv_.wait(lk, [&] { return done_ == chunks_ && active_ == 0; });
    job_ = nullptr;
  }

 private:
  void work() {
    int64_t finished = 0;
    for (;;) {
      int64_t c = next_.fetch_add(1);
      if (c >= chunks_) break;
      (*job_)(c);
      ++finished;
    }
    if (finished) {
      std::lock_guard<std::mutex> lk(mu_);
      done_ += finished;
      if (done_ == chunks_) done_cv_.notify_all();
    }
  }
  void loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || (generation_ != seen && job_ != nullptr); });
        if (stop_) return;
        seen = generation_;
        ++active_;
      }
      work();
      std::lock_guard<std::mutex> lk(mu_);
      if (--active_ == 0) done_cv_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t chunks_ = 0, done_ = 0;
  int active_ = 0;  // workers inside work() for the current region
  std::atomic<int64_t> next_{0};
  uint64_t generation_ = 0;
  bool stop_ = false;
};

std::mutex g_mu;
int g_requested = 0;
std::unique_ptr<pool> g_pool;

int default_threads() {
  if (const char* env = std::getenv("TROUPE_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

pool& get_pool() {
  std::lock_guard<std::mutex> lk(g_mu);
  int want = g_requested > 0 ? g_requested : default_threads();
  if (!g_pool || g_pool->size() != want) g_pool = std::make_unique<pool>(want);
  return *g_pool;
}

}  // namespace

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_requested = n;
}

int num_threads() { return get_pool().size(); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  pool& p = get_pool();
  int64_t max_chunks = (n + grain - 1) / grain;
  int64_t chunks = std::min<int64_t>(max_chunks, static_cast<int64_t>(p.size()) * 4);
  if (chunks <= 1 || p.size() == 1) {
    fn(0, n);
    return;
  }
  const int64_t per = (n + chunks - 1) / chunks;
  std::function<void(int64_t)> job = [&](int64_t c) {
    int64_t b = c * per, e = std::min(n, b + per);
    if (b < e) fn(b, e);
  };
  p.run(chunks, job);
}

}  // namespace troupe::kernels::cpu
