#include <iostream>

#include "cli/bench.h"
#include "cli/command.h"

namespace troupe::cli {

std::map<std::string, bench_mode>& bench_table() {
  static std::map<std::string, bench_mode> table;
  return table;
}

namespace {

int run(const std::vector<std::string>& args) {
  auto& table = bench_table();
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || !table.count(args[0])) {
    if (!args.empty() && args[0] != "--help" && args[0] != "-h") {
      std::cerr << "troupe bench: unknown mode '" << args[0] << "'\n";
    }
    std::cerr << "usage: troupe bench <mode> [options]\n\nmodes:\n";
    for (const auto& [name, m] : table) std::cerr << "  " << name << "\t" << m.summary << "\n";
    return args.empty() || (args[0] != "--help" && args[0] != "-h") ? 2 : 0;
  }
  return table[args[0]].run(std::vector<std::string>(args.begin() + 1, args.end()));
}

command_registrar reg("bench", "benchmarks that print figures (troupe bench --help lists the modes)", run);

}  // namespace
}  // namespace troupe::cli
