#include "reference/common.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "fp8kv/error.h"

namespace fp8kv::reference::detail {

float round_to_odd(double value) {
  const float nearest = static_cast<float>(value);
  if (static_cast<double>(nearest) == value || std::isnan(value) || std::isinf(nearest)) return nearest;
  // The float below `value` in magnitude, then its odd neighbour if it is even.
  const float truncated = std::fabs(static_cast<double>(nearest)) > std::fabs(value) ? std::nextafter(nearest, 0.0f)
                                                                                     : nearest;
  uint32_t bits;
  std::memcpy(&bits, &truncated, sizeof(bits));
  bits |= 1u;
  float result;
  std::memcpy(&result, &bits, sizeof(result));
  return result;
}

void store_rounded(void* data, DType dtype, int64_t index, double value) {
  if (dtype == DType::kFloat32) {
    static_cast<float*>(data)[index] = static_cast<float>(value);
    return;
  }
  store(data, dtype, index, round_to_odd(value));
}

void require_cpu(Device device, const char* argument) {
  FP8KV_REQUIRE(device == Device::kCpu, argument,
                "the CPU reference needs host tensors, got a CUDA one (use the CUDA entry points in fp8kv/cuda.h)");
}

namespace {

int thread_count() {
  if (const char* env = std::getenv("FP8KV_REFERENCE_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

void parallel_for(int64_t count, const std::function<void(int64_t)>& fn) {
  const int64_t threads = std::min<int64_t>(thread_count(), count);
  if (threads <= 1) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    for (int64_t i = next++; i < count; i = next++) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = count;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace fp8kv::reference::detail
