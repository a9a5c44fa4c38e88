#include "core/json_file.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace troupe {

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded()) throw error(path + ": not valid JSON");
  return j;
}

}  // namespace troupe
