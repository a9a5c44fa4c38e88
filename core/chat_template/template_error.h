// How every chat-template failure is reported: a troupe::error naming the template line, which the
// gateway turns into a 400 and the CLI prints as one line.
#pragma once

#include <string>

#include "core/error.h"

namespace troupe::jinja {

[[noreturn]] inline void throw_template_error(int line, const std::string& msg) {
  throw troupe::error("chat template line " + std::to_string(line) + ": " + msg);
}

}  // namespace troupe::jinja
