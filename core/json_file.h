// Reads a whole JSON file; a missing file or bad JSON is a troupe::error naming the path.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace troupe {

nlohmann::json read_json_file(const std::string& path);

}  // namespace troupe
