// The KvCache as the Python module holds it: the library's cache plus the CUDA device it lives on.
#pragma once

#include <string>

#include "fp8kv/kv_cache.h"

namespace fp8kv::python {

class PyKvCache : public KvCache {
 public:
  PyKvCache(const KvCacheSpec& spec, Device device, int device_index)
      : KvCache(spec, device), device_index_(device_index) {}
  // KvCache owns move-only buffers; saying so keeps nanobind from generating a copy.
  PyKvCache(const PyKvCache&) = delete;
  PyKvCache& operator=(const PyKvCache&) = delete;
  // The CUDA device ordinal the pools were allocated on (0 for a host cache).
  int device_index() const { return device_index_; }

 private:
  int device_index_;
};

// "cpu", "cuda" or "cuda:N" -> device and ordinal. CUDA needs a CUDA build, and "cuda:N" must be
// the current device: kernels run on the current device, and fp8kv never switches it behind the
// caller's back.
std::pair<Device, int> parse_device(const std::string& name);

// The current CUDA device; throws Unsupported without a CUDA build.
int current_cuda_device();

}  // namespace fp8kv::python
