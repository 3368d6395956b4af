// Host side of the cache write: validation, then one launch of cache_write_kernel for the
// (input dtype, storage dtype, head dim) at hand.
#include <cuda_runtime.h>

#include "cuda/cache_write.cuh"
#include "cuda/cuda_check.h"
#include "cuda/device_errors.h"
#include "fp8kv/cuda.h"

namespace fp8kv::cuda {
namespace {

using cuda_detail::CacheWriteParams;
using cuda_detail::kCacheWriteThreads;

template <typename In, typename Storage, int kHeadDim>
void launch(const CacheWriteParams& p, cudaStream_t stream) {
  constexpr int kRowThreads = kHeadDim / 8;
  const int64_t threads = p.num_tokens * p.layout.num_kv_heads * kRowThreads;
  const int64_t blocks = (threads + kCacheWriteThreads - 1) / kCacheWriteThreads;
  cuda_detail::cache_write_kernel<In, Storage, kHeadDim>
      <<<static_cast<unsigned>(blocks), kCacheWriteThreads, 0, stream>>>(p);
  FP8KV_CUDA_CHECK_LAUNCH();
}

template <typename In, typename Storage>
void dispatch_head_dim(const CacheWriteParams& p, cudaStream_t stream) {
  switch (p.layout.head_dim) {
    case 64: return launch<In, Storage, 64>(p, stream);
    case 128: return launch<In, Storage, 128>(p, stream);
    case 256: return launch<In, Storage, 256>(p, stream);
    default: throw Unsupported("cache write for head_dim " + std::to_string(p.layout.head_dim));
  }
}

template <typename In>
void dispatch_storage(DType storage, const CacheWriteParams& p, cudaStream_t stream) {
  switch (storage) {
    case DType::kBFloat16: return dispatch_head_dim<In, Bf16>(p, stream);
    case DType::kFloat16: return dispatch_head_dim<In, Fp16>(p, stream);
    case DType::kFp8E4M3: return dispatch_head_dim<In, Fp8E4M3>(p, stream);
    case DType::kFp8E5M2: return dispatch_head_dim<In, Fp8E5M2>(p, stream);
    default: throw Unsupported(std::string("cache storage dtype ") + dtype_name(storage));
  }
}

}  // namespace

void write_kv_cache(const CacheWriteArgs& args, void* stream) {
  validate(args);
  FP8KV_REQUIRE(args.cache.device == Device::kCuda, "cache", "write_kv_cache (CUDA) needs a cache on the device");
  const PagedKvLayer& cache = args.cache;
  CacheWriteParams p{};
  p.key = args.key.data;
  p.value = args.value.data;
  p.slot_mapping = args.slot_mapping.ptr<const int64_t>();
  if (args.rope.cos_sin.defined()) {
    p.positions = args.positions.ptr<const int32_t>();
    p.cos_sin = args.rope.cos_sin.ptr<const float>();
    p.max_position = static_cast<int>(args.rope.cos_sin.size(0));
    p.rotary_dim = static_cast<int>(args.rope.cos_sin.size(1));
  }
  p.num_tokens = args.key.size(0);
  p.num_blocks = cache.num_blocks;
  p.layout = cache.layout;
  p.k_cache = cache.k;
  p.v_cache = cache.v;
  p.scales = cuda_detail::CacheScales::of(cache);
  p.error_flags = cuda_detail::device_error_word();
  if (p.num_tokens == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  if (args.key.dtype == DType::kBFloat16) {
    dispatch_storage<Bf16>(cache.dtype, p, s);
  } else {
    dispatch_storage<Fp16>(cache.dtype, p, s);
  }
}

}  // namespace fp8kv::cuda
