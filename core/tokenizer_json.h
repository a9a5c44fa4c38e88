// Reads tokenizer.json fast: a SAX pass builds the JSON document for everything except the BPE
// model's vocab and merges, which go straight into flat vectors. A full DOM spends most of its time
// allocating a sorted map of 150k-260k vocab entries that is thrown away right after.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace troupe::tokenizer_detail {

struct bpe_tables {
  bool has_vocab = false;   // "vocab" was an object
  bool has_merges = false;  // "merges" was an array
  std::vector<std::pair<std::string, int64_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // a merge that is not two tokens has ""
                                                            // as its second part and a first part
                                                            // holding the raw entry
  std::vector<size_t> bad_merges;                           // indices of malformed merges
};

// Parses the whole file; tables receives model.vocab and model.merges, which are absent from the
// returned document. Throws troupe::error prefixed with `name` on malformed JSON.
nlohmann::json parse_tokenizer_json(std::string_view text, const std::string& name, bpe_tables& tables);

}  // namespace troupe::tokenizer_detail
