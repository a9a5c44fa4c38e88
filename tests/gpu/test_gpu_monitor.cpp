// gpu_monitor: NVML's SM clock and board power sampled around GPU work, and its JSON fields.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "cli/cuda/gpu_monitor.h"
#include "kernels/cuda/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace troupe::gpu_test {
namespace {

TEST(GpuMonitor, JsonFieldsNameEveryFigure) {
  gpu_monitor::summary none;
  const std::string empty = gpu_monitor_json_fields(none);
  EXPECT_NE(empty.find("\"sm_clock_mhz_mean\": null"), std::string::npos) << empty;
  EXPECT_NE(empty.find("\"clock_samples\": 0"), std::string::npos) << empty;
  gpu_monitor::summary s;
  s.samples = 12;
  s.sm_clock_mhz_mean = 1452.4;
  s.sm_clock_mhz_min = 1395;
  s.sm_clock_mhz_max = 1515;
  s.power_w_mean = 693.24;
  const std::string got = gpu_monitor_json_fields(s);
  EXPECT_EQ(got,
            "\"sm_clock_mhz_mean\": 1452, \"sm_clock_mhz_min\": 1395, \"sm_clock_mhz_max\": 1515, "
            "\"power_w_mean\": 693.2, \"clock_samples\": 12");
}

TEST(GpuMonitor, SamplesClockAndPowerAroundWork) {
  TROUPE_SKIP_WITHOUT_GPU();
  int dev = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
  gpu_monitor mon(dev, std::chrono::milliseconds(20));
  if (!mon.available()) GTEST_SKIP() << "NVML: " << mon.unavailable_reason();
  const int64_t n = int64_t{64} << 20;  // 128 MB of bf16, refilled until ~200 ms have passed
  device_buffer<bf16> buf(static_cast<size_t>(n));
  mon.start();
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t seed = 1; std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(200); ++seed) {
    kernels::cuda::fill_random_normal(buf.get(), n, seed, 0.0f, 1.0f, nullptr);
    TROUPE_CUDA_CHECK(cudaDeviceSynchronize());
  }
  const gpu_monitor::summary s = mon.stop();
  EXPECT_GE(s.samples, 3);
  EXPECT_GT(s.sm_clock_mhz_min, 100.0);
  EXPECT_LT(s.sm_clock_mhz_max, 5000.0);
  EXPECT_LE(s.sm_clock_mhz_min, s.sm_clock_mhz_mean);
  EXPECT_LE(s.sm_clock_mhz_mean, s.sm_clock_mhz_max);
  EXPECT_GT(s.power_w_mean, 10.0);
  EXPECT_LT(s.power_w_mean, 5000.0);
  // A second window starts empty.
  mon.start();
  const gpu_monitor::summary again = mon.stop();
  EXPECT_LE(again.samples, 3);
}

}  // namespace
}  // namespace troupe::gpu_test
