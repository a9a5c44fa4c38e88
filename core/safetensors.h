// Memory-mapped safetensors checkpoints: one file or a sharded set behind model.safetensors.index.json.
// Tensors are views into the mapping; nothing is copied until a backend converts or uploads them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace troupe {

enum class dtype { f32, f16, bf16, f64, i64, i32, i16, i8, u8, boolean, f8_e4m3, f8_e5m2, unknown };
const char* dtype_name(dtype t);
size_t dtype_size(dtype t);

struct tensor_view {
  std::string name;
  std::string file;  // the shard it lives in (for error messages)
  dtype type = dtype::unknown;
  std::string type_name;  // as written in the header
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // [numel * dtype_size], inside the mapping
  size_t nbytes = 0;

  int64_t numel() const;
  std::string shape_str() const;  // "[4, 8]"
};

// Read-only mmap of a whole file; unmapped on destruction.
class mapped_file {
 public:
  explicit mapped_file(const std::string& path);  // throws troupe::error
  ~mapped_file();
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class safetensors_file {
 public:
  // Validates the header: length, JSON, dtype names, shapes, offsets inside the file and consistent with
  // the shapes. Throws troupe::error naming the file (and tensor) on any problem.
  explicit safetensors_file(const std::string& path);
  const std::map<std::string, tensor_view>& tensors() const { return tensors_; }
  const std::string& path() const { return file_->path(); }

 private:
  std::shared_ptr<mapped_file> file_;
  std::map<std::string, tensor_view> tensors_;
};

// All tensors of a model directory: model.safetensors, or the shards named by model.safetensors.index.json.
class checkpoint {
 public:
  static checkpoint open(const std::string& model_dir);  // throws troupe::error
  const tensor_view* find(const std::string& name) const;
  const tensor_view& at(const std::string& name) const;  // throws naming the tensor and the directory
  const std::map<std::string, tensor_view>& tensors() const { return tensors_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::shared_ptr<safetensors_file>> files_;
  std::map<std::string, tensor_view> tensors_;
};

// Converts a bf16/f16/f32 tensor to float32. Throws on any other dtype, naming tensor and file.
void tensor_to_f32(const tensor_view& t, float* out);

float bf16_to_f32(uint16_t v);
float f16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float v);  // round to nearest even

}  // namespace troupe
