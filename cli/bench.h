// `troupe bench <mode>`: each benchmark mode lives in its own cli/bench_<mode>.cpp and registers here, so
// CPU-only and CUDA benchmarks can be added independently. Benchmarks print figures (JSON with --json);
// they never assert timings.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace troupe::cli {

struct bench_mode {
  std::string summary;
  std::function<int(const std::vector<std::string>& args)> run;
};

std::map<std::string, bench_mode>& bench_table();

struct bench_registrar {
  bench_registrar(const std::string& name, const std::string& summary,
                  std::function<int(const std::vector<std::string>&)> fn) {
    bench_table()[name] = bench_mode{summary, std::move(fn)};
  }
};

}  // namespace troupe::cli
