#include "cli/model_loading.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/args.h"
#include "core/error.h"
#include "kernels/cpu/thread_pool.h"
#include "plugins/cpu/cpu_model_runner.h"

#ifdef TROUPE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "plugins/cuda/cuda_model_runner.h"
#endif

namespace troupe::cli {

bool cuda_built() {
#ifdef TROUPE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef TROUPE_HAVE_CUDA
  int n = 0;
  // No driver or no device is an answer ("none"), not an error: clear the sticky error state it leaves.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

model_load_options model_load_options_from(const arg_parser& ap) {
  model_load_options opt;
  opt.device = ap.get_or("device", "auto");
  opt.attention = ap.get_or("attention", "flash");
  return opt;
}

namespace {

std::string resolve_device(const model_load_options& opt) {
  if (opt.device == "cpu") return "cpu";
  if (opt.device == "auto") return cuda_built() && cuda_device_count() > 0 ? "cuda" : "cpu";
  if (opt.device != "cuda")
    throw error("--device: unknown device '" + opt.device + "' (valid: cpu, cuda, auto)");
  if (!cuda_built())
    throw error("--device cuda: this troupe was built without CUDA (configure with -DTROUPE_CUDA=ON)");
  if (cuda_device_count() == 0) throw error("--device cuda: no CUDA device is visible on this machine");
  return "cuda";
}

}  // namespace

loaded_model load_model(const std::string& dir, const model_load_options& opt) {
  if (opt.attention != "flash" && opt.attention != "paged")
    throw error("--attention: unknown plugin '" + opt.attention + "' (valid: flash, paged)");
  loaded_model m;
  m.device = resolve_device(opt);
  if (m.device == "cuda") {
#ifdef TROUPE_HAVE_CUDA
    cuda_runner_options copt;
    copt.num_kv_blocks = opt.num_kv_blocks;
    copt.attention = opt.attention;
    copt.gpu_memory_utilization = opt.gpu_memory_utilization;
    copt.cuda_graphs = opt.cuda_graphs;
    if (opt.show_progress) {
      // One line redrawn on a terminal; on a log, a line at each quarter.
      const bool tty = isatty(STDERR_FILENO) != 0;
      auto last_quarter = std::make_shared<int>(-1);
      copt.on_progress = [tty, last_quarter](int32_t done, int32_t total, int64_t bytes) {
        const int pct = total > 0 ? static_cast<int>(100.0 * done / total) : 100;
        if (!tty && pct / 25 == *last_quarter) return;
        *last_quarter = pct / 25;
        std::fprintf(stderr, "%sloading weights: %d/%d layers, %.2f GB on the GPU (%d%%)%s", tty ? "\r" : "",
                     done, total, static_cast<double>(bytes) / 1e9, pct, tty && done < total ? "" : "\n");
        std::fflush(stderr);
      };
    }
    m.runner = cuda_model_runner::load(dir, copt);
#endif
  } else {
    if (opt.threads > 0) kernels::cpu::set_num_threads(opt.threads);
    cpu_runner_options copt;
    copt.num_kv_blocks = opt.num_kv_blocks;
    m.runner = cpu_model_runner::load(dir, copt);
  }
  if (std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json")) {
    m.tok = std::make_unique<tokenizer>(tokenizer::load_dir(dir));
  }
  return m;
}

loaded_model load_model(const std::string& dir, int32_t num_kv_blocks, int32_t threads) {
  model_load_options opt;
  opt.device = "cpu";
  opt.num_kv_blocks = num_kv_blocks;
  opt.threads = threads;
  return load_model(dir, opt);
}

}  // namespace troupe::cli
