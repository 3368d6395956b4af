// Safetensors checkpoints: `model.safetensors`, or shards listed by
// `model.safetensors.index.json`, memory-mapped and validated before anything is copied anywhere.
//
// Validation at open: each file's 8-byte header length and JSON header parse; every tensor's
// dtype is one of BF16/F16/F32 (or F8_E4M3/F8_E5M2 for scale-adjacent data), its data_offsets lie
// inside the file, agree with shape * dtype size, and do not overlap; a truncated file is caught
// here. Errors are FileError naming the file and the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fp8kv/dtype.h"

namespace fp8kv::engine {

// A tensor inside a memory-mapped safetensors file (host memory, read-only).
struct CheckpointTensor {
  std::string name;
  std::string file;             // the file it lives in, for error messages
  DType dtype = DType::kBFloat16;
  std::vector<int64_t> shape;
  const void* data = nullptr;   // points into the mapping; valid while the Checkpoint lives
  size_t nbytes = 0;
};

class Checkpoint {
 public:
  // Opens and validates every safetensors file of a Hugging Face model directory.
  static Checkpoint open(const std::string& model_dir);

  bool has(const std::string& name) const;
  // The tensor, checked against `expected_shape`; FileError naming the tensor if it is missing or
  // has another shape.
  const CheckpointTensor& get(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  const CheckpointTensor* find(const std::string& name) const;  // null if absent
  std::vector<std::string> names() const;

  // Reads a tensor of any supported dtype as float32 (for scales, norms, small tensors).
  std::vector<float> read_float(const std::string& name) const;

  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  ~Checkpoint();

 private:
  Checkpoint();
  struct Mapping;
  std::vector<std::unique_ptr<Mapping>> mappings_;
  std::map<std::string, CheckpointTensor> tensors_;
};

// Writes tensors to a single safetensors file (used by tests to build small checkpoints and by the
// engine benchmark's random-weight model). `tensors` data pointers are host memory.
void write_safetensors(const std::string& path, const std::vector<CheckpointTensor>& tensors);

}  // namespace fp8kv::engine
