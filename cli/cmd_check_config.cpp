// troupe check-config FILE: loads and validates a serve configuration without serving. Every problem is
// reported at once (unknown keys with the closest valid name, bad values, plugin combinations that cannot
// work together, missing files); exit status 1 when there is any, 0 with the effective settings otherwise.
#include <iostream>

#include "cli/command.h"
#include "cli/serve_config.h"
#include "core/error.h"

namespace troupe::cli {
namespace {

int run(const std::vector<std::string>& args) {
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::cout << "usage: troupe check-config FILE\n\nValidates a `troupe serve` configuration (YAML or JSON) "
                 "without serving: every problem at once, exit status 1 when there is any.\n";
    return 0;
  }
  if (args.size() != 1) throw error("usage: troupe check-config FILE");
  serve_config cfg;
  std::vector<std::string> problems = read_serve_config_file(args[0], cfg);
  const bool readable = problems.empty() || problems[0].find(": cannot open") == std::string::npos;
  if (readable) {
    for (auto& p : validate_serve_config(cfg, true)) problems.push_back(std::move(p));
  }
  if (!problems.empty()) {
    std::cerr << args[0] << ": " << problems.size() << (problems.size() == 1 ? " problem" : " problems")
              << "\n";
    for (const auto& p : problems) std::cerr << "  - " << p << "\n";
    return 1;
  }
  std::cout << args[0] << ": ok\n";
  for (const auto& [k, v] : serve_config_values(cfg)) std::cout << "  " << k << ": " << v << "\n";
  return 0;
}

command_registrar reg("check-config",
                      "validate a serve configuration file without serving (every problem at once)", run);

}  // namespace
}  // namespace troupe::cli
