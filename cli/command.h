// Subcommand registry for the `troupe` binary. Each cli/cmd_<name>.cpp registers itself with a
// static `troupe::cli::command_registrar`, so adding a command touches no shared file.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace troupe::cli {

// args excludes the program name and the subcommand name. Returns the process exit status.
using command_fn = std::function<int(const std::vector<std::string>& args)>;

struct command_info {
  std::string summary;
  command_fn run;
};

std::map<std::string, command_info>& command_table();

struct command_registrar {
  command_registrar(const std::string& name, const std::string& summary, command_fn fn) {
    command_table()[name] = command_info{summary, std::move(fn)};
  }
};

}  // namespace troupe::cli
