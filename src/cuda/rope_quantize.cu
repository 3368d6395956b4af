// Host side of the prefill path's quantiser: cuda::rope_quantize (RoPE + Q quantisation + K/V
// cache write, the step before paged_prefill) and cuda::quantize_heads (dense bf16 -> E4M3, the
// step before prefill).
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/cuda_check.h"
#include "cuda/device_errors.h"
#include "cuda/rope_quantize.cuh"
#include "fp8kv/cuda_prefill.h"
#include "fp8kv/error.h"

namespace fp8kv::cuda {
namespace {

using cuda_detail::RopeQuantizeParams;

void check_on_device(const TensorRef& t, const char* name) {
  FP8KV_REQUIRE(t.defined() && t.device == Device::kCuda, name, "must be a tensor on the CUDA device");
}

template <int kHeadDim>
void launch_all(const RopeQuantizeParams& p, cudaStream_t stream) {
  using M = cuda_detail::RowMap<kHeadDim>;
  FP8KV_CUDA_CHECK(cudaMemsetAsync(p.q_scale, 0, sizeof(float) * static_cast<size_t>(p.q_groups), stream));
  const int64_t q_rows = p.num_tokens * p.num_q_heads;
  const int64_t q_blocks = (q_rows + M::kRowsPerBlock - 1) / M::kRowsPerBlock;
  cuda_detail::q_amax_kernel<kHeadDim><<<static_cast<unsigned>(q_blocks), cuda_detail::kRopeQuantizeThreads, 0, stream>>>(p);
  FP8KV_CUDA_CHECK_LAUNCH();
  cuda_detail::amax_to_scale_kernel<<<1, static_cast<unsigned>((p.q_groups + 31) / 32 * 32), 0, stream>>>(p.q_scale, p.q_groups);
  FP8KV_CUDA_CHECK_LAUNCH();
  constexpr int kRowsPerWarp = 32 / M::kRowLanes;
  const int64_t rows = (q_rows + kRowsPerWarp - 1) / kRowsPerWarp * kRowsPerWarp + p.num_tokens * p.num_kv_heads;
  const int64_t blocks = (rows + M::kRowsPerBlock - 1) / M::kRowsPerBlock;
  cuda_detail::rope_quantize_kernel<kHeadDim><<<static_cast<unsigned>(blocks), cuda_detail::kRopeQuantizeThreads, 0, stream>>>(p);
  FP8KV_CUDA_CHECK_LAUNCH();
}

void launch(const RopeQuantizeParams& p, int head_dim, void* stream) {
  if (p.num_tokens == 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (head_dim == 128) {
    launch_all<128>(p, s);
  } else {
    launch_all<64>(p, s);
  }
}

void check_q(const TensorRef& q, const TensorRef& q_out, const TensorRef& scale, int groups) {
  check_on_device(q, "q");
  check_dtype(q, "q", {DType::kBFloat16});
  FP8KV_REQUIRE(q.ndim == 3, "q", "expected shape [num_tokens, num_heads, head_dim], got ", q.shape_string());
  FP8KV_REQUIRE(q.size(2) == 64 || q.size(2) == 128, "q", "head_dim must be 64 or 128, got ", q.size(2));
  check_on_device(q_out, "q_out");
  check_dtype(q_out, "q_out", {DType::kFp8E4M3});
  check_shape(q_out, "q_out", {q.size(0), q.size(1), q.size(2)}, "[num_tokens, num_heads, head_dim] (as q)");
  check_on_device(scale, "q_scale");
  check_dtype(scale, "q_scale", {DType::kFloat32});
  check_shape(scale, "q_scale", {groups}, "[num_groups]");
  FP8KV_REQUIRE(groups > 0 && q.size(1) % groups == 0, "q_scale", "its ", groups,
                " groups must divide the ", q.size(1), " heads");
}

}  // namespace

void rope_quantize(const RopeQuantizeArgs& args, const PrefillOptions& options, void* stream) {
  CacheWriteArgs cw;
  cw.key = args.k;
  cw.value = args.v;
  cw.slot_mapping = args.slot_mapping;
  cw.cache = args.cache;
  cw.positions = args.positions;
  cw.rope = args.rope;
  validate(cw);
  FP8KV_REQUIRE(args.cache.dtype == DType::kFp8E4M3, "cache", "rope_quantize writes an FP8 E4M3 cache, got ",
                dtype_name(args.cache.dtype));
  check_dtype(args.k, "k", {DType::kBFloat16});
  const int num_kv_heads = args.cache.layout.num_kv_heads;
  check_q(args.q, args.q_out, args.q_scale, num_kv_heads);
  check_shape(args.q, "q", {args.k.size(0), -1, args.k.size(2)}, "[num_tokens, num_q_heads, head_dim] (as k)");

  RopeQuantizeParams p{};
  p.q = args.q.ptr<const Bf16>();
  p.k = args.k.ptr<const Bf16>();
  p.v = args.v.ptr<const Bf16>();
  if (args.rope.cos_sin.defined()) {
    p.positions = args.positions.ptr<const int32_t>();
    p.cos_sin = args.rope.cos_sin.ptr<const float>();
    p.max_position = static_cast<int>(args.rope.cos_sin.size(0));
    p.rotary_dim = static_cast<int>(args.rope.cos_sin.size(1));
  }
  p.num_tokens = args.q.size(0);
  p.num_q_heads = static_cast<int>(args.q.size(1));
  p.num_kv_heads = num_kv_heads;
  p.q_groups = num_kv_heads;
  p.hadamard = options.incoherent_processing;
  p.hadamard_seed = options.hadamard_seed;
  p.q_out = args.q_out.ptr<Fp8E4M3>();
  p.q_scale = args.q_scale.ptr<float>();
  p.slot_mapping = args.slot_mapping.ptr<const int64_t>();
  p.num_blocks = args.cache.num_blocks;
  p.layout = args.cache.layout;
  p.k_cache = static_cast<Fp8E4M3*>(args.cache.k);
  p.v_cache = static_cast<Fp8E4M3*>(args.cache.v);
  p.scales = cuda_detail::CacheScales::of(args.cache);
  p.error_flags = cuda_detail::device_error_word();
  launch(p, static_cast<int>(args.q.size(2)), stream);
}

void quantize_heads(const TensorRef& x, const TensorRef& out, const TensorRef& scale, bool hadamard,
                    uint64_t hadamard_seed, void* stream) {
  FP8KV_REQUIRE(scale.ndim == 1, "scale", "expected shape [num_groups], got ", scale.shape_string());
  check_q(x, out, scale, static_cast<int>(scale.size(0)));
  RopeQuantizeParams p{};
  p.q = x.ptr<const Bf16>();
  p.max_position = 1;
  p.num_tokens = x.size(0);
  p.num_q_heads = static_cast<int>(x.size(1));
  p.q_groups = static_cast<int>(scale.size(0));
  p.hadamard = hadamard;
  p.hadamard_seed = hadamard_seed;
  p.q_out = out.ptr<Fp8E4M3>();
  p.q_scale = scale.ptr<float>();
  p.error_flags = cuda_detail::device_error_word();
  launch(p, static_cast<int>(x.size(2)), stream);
}

}  // namespace fp8kv::cuda
