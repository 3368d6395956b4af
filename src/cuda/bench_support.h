// Device helpers for the benchmarks (`fp8kv bench ...`): the read-bandwidth ceiling, L2 flushing,
// random fills and event timing. Host functions, so the CLI (plain C++) can call them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "fp8kv/dtype.h"

namespace fp8kv::cuda_bench {

// Device memory owned for the length of one benchmark configuration (cudaMalloc / cudaFree).
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

// Median GB/s (1e9 bytes/s) of a kernel that reads `bytes` of device memory once with 16-byte
// loads and reduces them (the HBM read ceiling decode kernels are measured against).
double measure_read_bandwidth_gbs(size_t bytes, int repeats);

// Fills `count` elements of `dtype` at `ptr` with random finite values: N(0,1)-like for
// bf16/fp16, uniformly random codes (NaN codes excluded) for FP8.
void fill_random(void* ptr, DType dtype, size_t count, uint64_t seed);

// Fills `count` floats with values uniform in [lo, hi) (scales).
void fill_uniform(float* ptr, size_t count, float lo, float hi, uint64_t seed);

// Median time in microseconds of `fn` (which enqueues work on the default stream), timed with CUDA
// events one call at a time after `warmup` calls, with the L2 cache flushed (by reading 256 MiB)
// before every call.
double time_median_us(const std::function<void()>& fn, int warmup, int repeats);

// The same for several functions compared with each other, interleaved: every warm-up and every
// timed round calls each of them in turn, so a drift of the GPU's clocks or temperature over the
// measurement reaches all of them alike instead of whichever was timed first. Medians, in order.
std::vector<double> time_interleaved_median_us(const std::vector<std::function<void()>>& fns, int warmup,
                                               int repeats);

// Name of the current device ("NVIDIA H100 80GB HBM3") and its free / total memory.
const char* device_name();
size_t device_free_bytes();

}  // namespace fp8kv::cuda_bench
