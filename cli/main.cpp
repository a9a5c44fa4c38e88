#include <cstdio>
#include <exception>
#include <iostream>

#include "cli/command.h"
#include "core/error.h"

namespace troupe::cli {
std::map<std::string, command_info>& command_table() {
  static std::map<std::string, command_info> table;
  return table;
}
}  // namespace troupe::cli

namespace {
void print_usage() {
  std::cerr << "usage: troupe <command> [options]\n\ncommands:\n";
  for (const auto& [name, info] : troupe::cli::command_table()) {
    std::cerr << "  " << name << std::string(name.size() < 16 ? 16 - name.size() : 1, ' ') << info.summary
              << "\n";
  }
  std::cerr << "\n`troupe <command> --help` describes a command's options.\n";
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    print_usage();
    return 2;
  }
  std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    print_usage();
    return 0;
  }
  if (name == "--version" || name == "version") {
    std::cout << "troupe " << TROUPE_VERSION << "\n";
    return 0;
  }
  auto& table = troupe::cli::command_table();
  auto it = table.find(name);
  if (it == table.end()) {
    std::cerr << "troupe: unknown command '" << name << "'\n";
    print_usage();
    return 2;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  try {
    return it->second.run(args);
  } catch (const troupe::error& e) {
    std::cerr << "troupe " << name << ": error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "troupe " << name << ": internal error: " << e.what() << "\n";
    return 1;
  }
}
