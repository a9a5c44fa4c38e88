// Samples a GPU's SM clock and board power while a benchmark runs, through NVML loaded at run time
// (libnvidia-ml.so.1 comes with the NVIDIA driver; nothing is linked at build time). Why: an H200 running
// the batch-256 decode sits at its 700 W limit with the SM clock at ~1.45 of its 1.98 GHz, so a throughput
// figure means little without the clock it ran at (docs/perf-notes.md v11).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace troupe {

class gpu_monitor {
 public:
  // The CUDA device `cuda_device` (matched to NVML by PCI bus id); samples every `period` between start()
  // and stop(). TROUPE_GPU_MONITOR=0 turns it off (unavailable), to check that it does not move a figure.
  explicit gpu_monitor(int cuda_device, std::chrono::milliseconds period = std::chrono::milliseconds(50));
  ~gpu_monitor();
  gpu_monitor(const gpu_monitor&) = delete;
  gpu_monitor& operator=(const gpu_monitor&) = delete;

  // Empty when NVML answered for this device, else why not (no driver library, an NVML error).
  const std::string& unavailable_reason() const { return reason_; }
  bool available() const { return reason_.empty(); }

  struct summary {
    int32_t samples = 0;  // 0: nothing measured (unavailable, or stopped before the first sample)
    double sm_clock_mhz_mean = 0, sm_clock_mhz_min = 0, sm_clock_mhz_max = 0;
    // Energy used over the window's length where NVML counts energy (Volta and later), else the mean of
    // the power readings, which recent GPUs average over about a second (so no maximum is reported: such a
    // reading can sit below the window's true mean).
    double power_w_mean = 0;
  };
  // One sample now, then one a period until stop(); a second start() restarts the window.
  void start();
  // Ends the window and summarizes its samples.
  summary stop();

 private:
  struct sample {
    uint32_t sm_mhz, power_mw;
  };
  bool read(sample& s) const;
  void run();

  struct nvml;  // the loaded library's entry points
  nvml* lib_ = nullptr;
  void* device_ = nullptr;  // nvmlDevice_t
  std::string reason_;
  std::chrono::milliseconds period_;
  std::thread thread_;
  std::atomic<bool> running_{false};
  std::mutex mu_;
  std::vector<sample> samples_;             // guarded by mu_
  unsigned long long energy_start_mj_ = 0;  // 0: no energy counter
  std::chrono::steady_clock::time_point window_start_;
};

// `summary` as JSON fields: "sm_clock_mhz_mean": .., "sm_clock_mhz_min": .., "sm_clock_mhz_max": ..,
// "power_w_mean": .., "clock_samples": n (no braces; nulls when nothing was measured).
std::string gpu_monitor_json_fields(const gpu_monitor::summary& s);

}  // namespace troupe
