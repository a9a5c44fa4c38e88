#include "cli/model_loading.h"

#include <filesystem>

#include "kernels/cpu/thread_pool.h"

namespace troupe::cli {

loaded_model load_model(const std::string& dir, int32_t num_kv_blocks, int32_t threads) {
  if (threads > 0) kernels::cpu::set_num_threads(threads);
  loaded_model m;
  cpu_runner_options opt;
  opt.num_kv_blocks = num_kv_blocks;
  m.runner = cpu_model_runner::load(dir, opt);
  if (std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json")) {
    m.tok = std::make_unique<tokenizer>(tokenizer::load_dir(dir));
  }
  return m;
}

}  // namespace troupe::cli
