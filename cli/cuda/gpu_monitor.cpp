#include "cli/cuda/gpu_monitor.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace troupe {

// The NVML entry points used here, declared from NVML's public API (nvml.h is not in the CUDA toolkit we
// build with): every call returns 0 (NVML_SUCCESS) on success; NVML_CLOCK_SM is 1; power is in milliwatts.
struct gpu_monitor::nvml {
  using init_fn = int (*)();
  using shutdown_fn = int (*)();
  using by_pci_fn = int (*)(const char*, void**);
  using clock_fn = int (*)(void*, int, unsigned int*);
  using power_fn = int (*)(void*, unsigned int*);
  using energy_fn = int (*)(void*, unsigned long long*);  // millijoules since the driver loaded
  void* handle = nullptr;
  init_fn init = nullptr;
  shutdown_fn shutdown = nullptr;
  by_pci_fn by_pci = nullptr;
  clock_fn clock = nullptr;
  power_fn power = nullptr;
  energy_fn energy = nullptr;  // optional (Volta and later)
  bool initialized = false;
};

namespace {
constexpr int kNvmlClockSm = 1;
}  // namespace

gpu_monitor::gpu_monitor(int cuda_device, std::chrono::milliseconds period) : period_(period) {
  if (const char* e = std::getenv("TROUPE_GPU_MONITOR"); e != nullptr && std::string(e) == "0") {
    reason_ = "off (TROUPE_GPU_MONITOR=0)";
    return;
  }
  char bus_id[32] = {0};
  if (cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), cuda_device) != cudaSuccess) {
    (void)cudaGetLastError();
    reason_ = "no PCI bus id for CUDA device " + std::to_string(cuda_device);
    return;
  }
  lib_ = new nvml;
  lib_->handle = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib_->handle == nullptr) {
    reason_ = "libnvidia-ml.so.1 not found (it comes with the NVIDIA driver)";
    return;
  }
  lib_->init = reinterpret_cast<nvml::init_fn>(dlsym(lib_->handle, "nvmlInit_v2"));
  lib_->shutdown = reinterpret_cast<nvml::shutdown_fn>(dlsym(lib_->handle, "nvmlShutdown"));
  lib_->by_pci = reinterpret_cast<nvml::by_pci_fn>(dlsym(lib_->handle, "nvmlDeviceGetHandleByPciBusId_v2"));
  lib_->clock = reinterpret_cast<nvml::clock_fn>(dlsym(lib_->handle, "nvmlDeviceGetClockInfo"));
  lib_->power = reinterpret_cast<nvml::power_fn>(dlsym(lib_->handle, "nvmlDeviceGetPowerUsage"));
  lib_->energy =
      reinterpret_cast<nvml::energy_fn>(dlsym(lib_->handle, "nvmlDeviceGetTotalEnergyConsumption"));
  if (lib_->init == nullptr || lib_->shutdown == nullptr || lib_->by_pci == nullptr ||
      lib_->clock == nullptr || lib_->power == nullptr) {
    reason_ = "libnvidia-ml.so.1 lacks an entry point this needs";
    return;
  }
  if (int r = lib_->init(); r != 0) {
    reason_ = "nvmlInit_v2 failed (" + std::to_string(r) + ")";
    return;
  }
  lib_->initialized = true;
  if (int r = lib_->by_pci(bus_id, &device_); r != 0) {
    reason_ = std::string("NVML has no device at ") + bus_id + " (" + std::to_string(r) + ")";
    return;
  }
  sample s{};
  if (!read(s)) reason_ = "NVML reads no SM clock or power for " + std::string(bus_id);
}

gpu_monitor::~gpu_monitor() {
  running_ = false;
  if (thread_.joinable()) thread_.join();
  if (lib_ != nullptr) {
    if (lib_->initialized) lib_->shutdown();
    if (lib_->handle != nullptr) dlclose(lib_->handle);
    delete lib_;
  }
}

bool gpu_monitor::read(sample& s) const {
  unsigned int mhz = 0, mw = 0;
  if (device_ == nullptr || lib_->clock(device_, kNvmlClockSm, &mhz) != 0 || lib_->power(device_, &mw) != 0)
    return false;
  s.sm_mhz = mhz;
  s.power_mw = mw;
  return true;
}

void gpu_monitor::run() {
  auto next = std::chrono::steady_clock::now();
  while (running_) {
    sample s{};
    if (read(s)) {
      std::lock_guard<std::mutex> lock(mu_);
      samples_.push_back(s);
    }
    // After a stall, resume the period from now rather than catching up with a burst of samples.
    next = std::max(next + period_, std::chrono::steady_clock::now());
    std::this_thread::sleep_until(next);
  }
}

void gpu_monitor::start() {
  running_ = false;
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    samples_.clear();
  }
  if (!available()) return;
  energy_start_mj_ = 0;
  unsigned long long mj = 0;
  if (lib_->energy != nullptr && lib_->energy(device_, &mj) == 0) energy_start_mj_ = mj;
  window_start_ = std::chrono::steady_clock::now();
  running_ = true;
  thread_ = std::thread([this] { run(); });
}

gpu_monitor::summary gpu_monitor::stop() {
  running_ = false;
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  summary out;
  out.samples = static_cast<int32_t>(samples_.size());
  if (samples_.empty()) return out;
  double mhz = 0, mw = 0;
  out.sm_clock_mhz_min = out.sm_clock_mhz_max = samples_[0].sm_mhz;
  for (const sample& s : samples_) {
    mhz += s.sm_mhz;
    mw += s.power_mw;
    out.sm_clock_mhz_min = std::min<double>(out.sm_clock_mhz_min, s.sm_mhz);
    out.sm_clock_mhz_max = std::max<double>(out.sm_clock_mhz_max, s.sm_mhz);
  }
  out.sm_clock_mhz_mean = mhz / samples_.size();
  out.power_w_mean = mw / 1000.0 / samples_.size();
  // The mean from the energy counter where there is one: power readings are themselves averages over about
  // a second on recent GPUs, so a short window's samples would mix in the power from before it.
  unsigned long long mj = 0;
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - window_start_).count();
  if (energy_start_mj_ > 0 && ms > 0 && lib_->energy(device_, &mj) == 0 && mj >= energy_start_mj_)
    out.power_w_mean = static_cast<double>(mj - energy_start_mj_) / ms;  // mJ / ms = W
  return out;
}

std::string gpu_monitor_json_fields(const gpu_monitor::summary& s) {
  char buf[256];
  if (s.samples == 0) {
    std::snprintf(buf, sizeof(buf),
                  "\"sm_clock_mhz_mean\": null, \"sm_clock_mhz_min\": null, \"sm_clock_mhz_max\": null, "
                  "\"power_w_mean\": null, \"clock_samples\": 0");
  } else {
    std::snprintf(buf, sizeof(buf),
                  "\"sm_clock_mhz_mean\": %.0f, \"sm_clock_mhz_min\": %.0f, \"sm_clock_mhz_max\": %.0f, "
                  "\"power_w_mean\": %.1f, \"clock_samples\": %d",
                  s.sm_clock_mhz_mean, s.sm_clock_mhz_min, s.sm_clock_mhz_max, s.power_w_mean, s.samples);
  }
  return buf;
}

}  // namespace troupe
