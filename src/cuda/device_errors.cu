#include "cuda/device_errors.h"

#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <vector>

#include "cuda/cache_write.cuh"
#include "cuda/cuda_check.h"
#include "fp8kv/cuda.h"

namespace fp8kv::cuda_detail {

uint32_t* device_error_word() {
  static std::mutex mutex;
  static std::vector<uint32_t*> words;
  int device = 0;
  FP8KV_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (words.size() <= static_cast<size_t>(device)) words.resize(static_cast<size_t>(device) + 1, nullptr);
  uint32_t*& word = words[static_cast<size_t>(device)];
  if (word == nullptr) {
    FP8KV_CUDA_CHECK(cudaMalloc(&word, sizeof(uint32_t)));
    FP8KV_CUDA_CHECK(cudaMemset(word, 0, sizeof(uint32_t)));
  }
  return word;
}

}  // namespace fp8kv::cuda_detail

namespace fp8kv::cuda {

bool available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

void check_errors() {
  using namespace cuda_detail;
  uint32_t* word = device_error_word();
  FP8KV_CUDA_CHECK(cudaDeviceSynchronize());
  uint32_t flags = 0;
  FP8KV_CUDA_CHECK(cudaMemcpy(&flags, word, sizeof(flags), cudaMemcpyDeviceToHost));
  if (flags == 0) return;
  FP8KV_CUDA_CHECK(cudaMemset(word, 0, sizeof(uint32_t)));
  if (flags & kErrorSlotOutOfRange) {
    throw InvalidArgument("slot_mapping", "an entry's block (slot / block_size) is >= the cache's num_blocks");
  }
  if (flags & kErrorPositionOutOfRange) {
    throw InvalidArgument("positions", "an entry is outside the RoPE table's [0, max_position)");
  }
  if (flags & kErrorBlockIdOutOfRange) {
    throw InvalidArgument("block_tables", "an entry read for a sequence's keys is outside [0, num_blocks)");
  }
  throw InvalidArgument("seq_lens",
                        "an entry is negative, exceeds its block table's capacity (max_blocks_per_seq * block_size), "
                        "or exceeds the decode plan's planned length + headroom");
}

}  // namespace fp8kv::cuda
