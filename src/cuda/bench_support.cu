#include "cuda/bench_support.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/fp8_convert.cuh"

namespace fp8kv::cuda_bench {
namespace {

// Larger than the H100's 50 MB L2, so writing it evicts every line a timed kernel could reuse.
constexpr size_t kL2FlushBytes = size_t{256} << 20;

__global__ void read_kernel(const uint4* __restrict__ data, size_t count, unsigned* sink) {
  uint32_t acc = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const uint4 v = __ldcs(data + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  // Never true for the data the bench fills (not all-equal words), but the compiler cannot know:
  // the loads stay.
  if (acc == 0x9e3779b9u) *sink = acc;
}

__device__ uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

// Approximately N(0,1) from the sum of four uniforms (mean 0, variance 1 after scaling).
__device__ float pseudo_normal(uint64_t h) {
  float s = 0.0f;
  for (int i = 0; i < 4; ++i) s += static_cast<float>((h >> (16 * i)) & 0xffffu) / 65536.0f;
  return (s - 2.0f) * 1.7320508f;
}

__global__ void fill_kernel(void* ptr, int dtype, size_t count, uint64_t seed) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const uint64_t h = mix(seed ^ (i * 0x9E3779B97F4A7C15ull));
    switch (static_cast<DType>(dtype)) {
      case DType::kBFloat16: static_cast<__nv_bfloat16*>(ptr)[i] = __float2bfloat16_rn(pseudo_normal(h)); break;
      case DType::kFloat16: static_cast<__half*>(ptr)[i] = __float2half_rn(pseudo_normal(h)); break;
      case DType::kFp8E4M3: {
        uint8_t code = static_cast<uint8_t>(h);
        if ((code & 0x7f) == 0x7f) code ^= 0x01;  // E4M3 NaN -> 448
        static_cast<uint8_t*>(ptr)[i] = code;
        break;
      }
      case DType::kFp8E5M2: {
        uint8_t code = static_cast<uint8_t>(h);
        if ((code & 0x7c) == 0x7c) code &= 0xfb;  // inf/NaN -> a finite code
        static_cast<uint8_t*>(ptr)[i] = code;
        break;
      }
      case DType::kFloat32: static_cast<float*>(ptr)[i] = pseudo_normal(h); break;
      default: static_cast<uint8_t*>(ptr)[i] = static_cast<uint8_t>(h); break;
    }
  }
}

__global__ void fill_uniform_kernel(float* ptr, size_t count, float lo, float hi, uint64_t seed) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const float u = static_cast<float>(mix(seed ^ (i * 0x9E3779B97F4A7C15ull)) >> 40) / 16777216.0f;
    ptr[i] = lo + (hi - lo) * u;
  }
}

struct Scratch {
  void* flush = nullptr;
  unsigned* sink = nullptr;
  Scratch() {
    FP8KV_CUDA_CHECK(cudaMalloc(&flush, kL2FlushBytes));
    FP8KV_CUDA_CHECK(cudaMemset(flush, 0x5a, kL2FlushBytes));
    FP8KV_CUDA_CHECK(cudaMalloc(&sink, sizeof(unsigned)));
  }
};

Scratch& scratch() {
  static Scratch s;
  return s;
}

unsigned grid_for(size_t items) {
  return static_cast<unsigned>(std::min<size_t>((items + 255) / 256, 132 * 16));
}

}  // namespace

double time_median_us(const std::function<void()>& fn, int warmup, int repeats) {
  return time_interleaved_median_us({fn}, warmup, repeats).front();
}

std::vector<double> time_interleaved_median_us(const std::vector<std::function<void()>>& fns, int warmup,
                                               int repeats) {
  for (int i = 0; i < warmup; ++i) {
    for (const auto& fn : fns) fn();
  }
  FP8KV_CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  FP8KV_CUDA_CHECK(cudaEventCreate(&start));
  FP8KV_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<std::vector<float>> times(fns.size());
  for (int i = 0; i < repeats; ++i) {
    for (size_t f = 0; f < fns.size(); ++f) {
      // Flush by reading, not writing: a memset would leave the L2 full of dirty lines whose
      // write-back then lands inside the timed region and penalises short kernels.
      read_kernel<<<132 * 8, 512>>>(static_cast<const uint4*>(scratch().flush), kL2FlushBytes / sizeof(uint4),
                                    scratch().sink);
      FP8KV_CUDA_CHECK_LAUNCH();
      FP8KV_CUDA_CHECK(cudaEventRecord(start));
      fns[f]();
      FP8KV_CUDA_CHECK(cudaEventRecord(stop));
      FP8KV_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0.0f;
      FP8KV_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      times[f].push_back(ms * 1000.0f);
    }
  }
  FP8KV_CUDA_CHECK(cudaEventDestroy(start));
  FP8KV_CUDA_CHECK(cudaEventDestroy(stop));
  std::vector<double> medians;
  for (auto& t : times) {
    std::sort(t.begin(), t.end());
    medians.push_back(t[t.size() / 2]);
  }
  return medians;
}

double measure_read_bandwidth_gbs(size_t bytes, int repeats) {
  void* data = nullptr;
  FP8KV_CUDA_CHECK(cudaMalloc(&data, bytes));
  fill_random(data, DType::kFloat32, bytes / 4, 1234);
  const size_t count = bytes / sizeof(uint4);
  int device = 0, sms = 0;
  FP8KV_CUDA_CHECK(cudaGetDevice(&device));
  FP8KV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const double us = time_median_us(
      [&] {
        read_kernel<<<static_cast<unsigned>(sms * 8), 512>>>(static_cast<const uint4*>(data), count, scratch().sink);
      },
      3, repeats);
  FP8KV_CUDA_CHECK_LAUNCH();
  FP8KV_CUDA_CHECK(cudaFree(data));
  return static_cast<double>(bytes) / (us * 1e-6) / 1e9;
}

void fill_random(void* ptr, DType dtype, size_t count, uint64_t seed) {
  if (count == 0) return;
  fill_kernel<<<grid_for(count), 256>>>(ptr, static_cast<int>(dtype), count, seed);
  FP8KV_CUDA_CHECK_LAUNCH();
}

void fill_uniform(float* ptr, size_t count, float lo, float hi, uint64_t seed) {
  if (count == 0) return;
  fill_uniform_kernel<<<grid_for(count), 256>>>(ptr, count, lo, hi, seed);
  FP8KV_CUDA_CHECK_LAUNCH();
}

const char* device_name() {
  static cudaDeviceProp prop;
  int device = 0;
  FP8KV_CUDA_CHECK(cudaGetDevice(&device));
  FP8KV_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

size_t device_free_bytes() {
  size_t free_bytes = 0, total = 0;
  FP8KV_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
  return free_bytes;
}

DeviceBuffer::DeviceBuffer(size_t bytes) {
  if (bytes > 0) FP8KV_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

}  // namespace fp8kv::cuda_bench
