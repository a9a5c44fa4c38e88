#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/json_file.h"

namespace troupe {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::f32:
      return "F32";
    case dtype::f16:
      return "F16";
    case dtype::bf16:
      return "BF16";
    case dtype::f64:
      return "F64";
    case dtype::i64:
      return "I64";
    case dtype::i32:
      return "I32";
    case dtype::i16:
      return "I16";
    case dtype::i8:
      return "I8";
    case dtype::u8:
      return "U8";
    case dtype::boolean:
      return "BOOL";
    case dtype::f8_e4m3:
      return "F8_E4M3";
    case dtype::f8_e5m2:
      return "F8_E5M2";
    case dtype::unknown:
      return "unknown";
  }
  return "unknown";
}

size_t dtype_size(dtype t) {
  switch (t) {
    case dtype::f64:
    case dtype::i64:
      return 8;
    case dtype::f32:
    case dtype::i32:
      return 4;
    case dtype::f16:
    case dtype::bf16:
    case dtype::i16:
      return 2;
    case dtype::i8:
    case dtype::u8:
    case dtype::boolean:
    case dtype::f8_e4m3:
    case dtype::f8_e5m2:
      return 1;
    case dtype::unknown:
      return 0;
  }
  return 0;
}

static dtype parse_dtype(const std::string& s) {
  static const std::map<std::string, dtype> names = {
      {"F32", dtype::f32},      {"F16", dtype::f16},         {"BF16", dtype::bf16},
      {"F64", dtype::f64},      {"I64", dtype::i64},         {"I32", dtype::i32},
      {"I16", dtype::i16},      {"I8", dtype::i8},           {"U8", dtype::u8},
      {"BOOL", dtype::boolean}, {"F8_E4M3", dtype::f8_e4m3}, {"F8_E5M2", dtype::f8_e5m2}};
  auto it = names.find(s);
  return it == names.end() ? dtype::unknown : it->second;
}

int64_t tensor_view::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string tensor_view::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

mapped_file::mapped_file(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw error(path + ": cannot stat: " + std::strerror(e));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      throw error(path + ": cannot mmap: " + std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

mapped_file::~mapped_file() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

safetensors_file::safetensors_file(const std::string& path) : file_(std::make_shared<mapped_file>(path)) {
  const size_t size = file_->size();
  if (size < 8)
    throw error(path + ": truncated safetensors file (" + std::to_string(size) + " bytes, no header)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file_->data()[i];
  if (header_len > size - 8) {
    throw error(path + ": truncated safetensors file (header says " + std::to_string(header_len) +
                " bytes, file has " + std::to_string(size - 8) + ")");
  }
  if (header_len > (uint64_t{100} << 20)) throw error(path + ": safetensors header over 100 MB");
  const char* hdr = reinterpret_cast<const char*>(file_->data() + 8);
  json j = json::parse(hdr, hdr + header_len, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw error(path + ": bad safetensors header (not a JSON object)");
  const size_t data_begin = 8 + header_len;
  const size_t data_size = size - data_begin;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string& name = it.key();
    const json& e = it.value();
    auto bad = [&](const std::string& why) { return error(path + ": tensor '" + name + "': " + why); };
    if (!e.is_object() || !e.contains("dtype") || !e["dtype"].is_string() || !e.contains("shape") ||
        !e["shape"].is_array() || !e.contains("data_offsets") || !e["data_offsets"].is_array() ||
        e["data_offsets"].size() != 2) {
      throw bad("bad header entry " + e.dump());
    }
    tensor_view t;
    t.name = name;
    t.file = path;
    t.type_name = e["dtype"].get<std::string>();
    t.type = parse_dtype(t.type_name);
    for (const auto& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) throw bad("bad shape " + e["shape"].dump());
      t.shape.push_back(d.get<int64_t>());
    }
    const auto& off = e["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) throw bad("bad data_offsets");
    uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    if (b > en || en > data_size) {
      throw bad("data_offsets [" + std::to_string(b) + ", " + std::to_string(en) +
                "] run past the end of the file (truncated? data section has " + std::to_string(data_size) +
                " bytes)");
    }
    t.nbytes = en - b;
    if (t.type != dtype::unknown) {
      uint64_t expect = static_cast<uint64_t>(t.numel()) * dtype_size(t.type);
      if (expect != t.nbytes) {
        throw bad("holds " + std::to_string(t.nbytes) + " bytes but shape " + t.shape_str() + " of " +
                  t.type_name + " needs " + std::to_string(expect));
      }
    }
    t.data = file_->data() + data_begin + b;
    tensors_.emplace(name, std::move(t));
  }
}

checkpoint checkpoint::open(const std::string& model_dir) {
  checkpoint c;
  c.dir_ = model_dir;
  fs::path dir(model_dir);
  fs::path single = dir / "model.safetensors";
  fs::path index = dir / "model.safetensors.index.json";
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;
  if (fs::exists(index)) {
    json j = read_json_file(index.string());
    if (!j.contains("weight_map") || !j["weight_map"].is_object()) {
      throw error(index.string() + ": field 'weight_map' is missing");
    }
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        throw error(index.string() + ": weight_map entry '" + it.key() + "' is not a file name");
      std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard == "..") {
        throw error(index.string() + ": weight_map entry '" + it.key() +
                    "' names a file outside the directory");
      }
      weight_map[it.key()] = shard;
      if (std::find(shard_names.begin(), shard_names.end(), shard) == shard_names.end())
        shard_names.push_back(shard);
    }
  } else if (fs::exists(single)) {
    shard_names.push_back("model.safetensors");
  } else {
    throw error(model_dir + ": no model.safetensors or model.safetensors.index.json");
  }
  for (const auto& s : shard_names) {
    auto f = std::make_shared<safetensors_file>((dir / s).string());
    for (const auto& [name, t] : f->tensors()) {
      if (!weight_map.empty()) {
        auto w = weight_map.find(name);
        if (w == weight_map.end() || w->second != s) continue;  // the index decides which shard owns it
      }
      if (!c.tensors_.emplace(name, t).second) {
        throw error(f->path() + ": tensor '" + name + "' appears in more than one file");
      }
    }
    c.files_.push_back(std::move(f));
  }
  for (const auto& [name, shard] : weight_map) {
    if (!c.tensors_.count(name)) {
      throw error((dir / shard).string() + ": tensor '" + name +
                  "' is listed in the index but missing from the file");
    }
  }
  return c;
}

const tensor_view* checkpoint::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const tensor_view& checkpoint::at(const std::string& name) const {
  const tensor_view* t = find(name);
  if (!t) throw error(dir_ + ": missing tensor '" + name + "'");
  return *t;
}

float bf16_to_f32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu))
    return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      mant &= 0x3ff;
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void tensor_to_f32(const tensor_view& t, float* out) {
  const int64_t n = t.numel();
  switch (t.type) {
    case dtype::f32:
      std::memcpy(out, t.data, static_cast<size_t>(n) * 4);
      return;
    case dtype::bf16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, t.data + 2 * i, 2);
        out[i] = bf16_to_f32(v);
      }
      return;
    case dtype::f16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, t.data + 2 * i, 2);
        out[i] = f16_to_f32(v);
      }
      return;
    default:
      throw error(t.file + ": tensor '" + t.name + "' has unsupported dtype " + t.type_name +
                  " (supported: BF16, F16, F32)");
  }
}

}  // namespace troupe
