// The CUDA engine backend: cuBLAS bf16 GEMMs with float32 accumulation, the layers of
// engine_ops.cuh, and fp8kv's attention kernels over the paged cache.
//
// Attention dispatch (one place, asked once per step):
//   * every sequence adds one token (decode): the paged decode kernel, planned once per step on
//     the host and reused by every layer;
//   * prefill chunks over an FP8 E4M3 cache the paged-prefill kernel supports (cuda_prefill.h:
//     head_dim 64 or 128, an sm_90a device): the RoPE'd bf16 Q is quantised to E4M3 with one scale
//     per KV-head group (cuda::quantize_heads) and cuda::paged_prefill runs the chunk on the FP8
//     tensor cores;
//   * other prefill chunks (bf16, fp16 and E5M2 caches, which have no FP8 prefill kernel): the
//     decode kernel over one row per new token, row i of a sequence seeing its prefix plus i + 1
//     keys: the causal mask of a prefill, exactly.
// The choice is made in one place, prefill_path().
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <string>
#include <tuple>

#include "cuda/cuda_check.h"
#include "cuda/engine_ops.cuh"
#include "fp8kv/cuda.h"
#include "fp8kv/cuda_prefill.h"
#include "fp8kv/engine/backend.h"
#include "fp8kv/error.h"

namespace fp8kv::engine {
namespace {

using engine_cuda::bf16;
constexpr int kThreads = 256;
// Decode plans are reused for later steps while each sequence has grown by at most this many
// tokens (a plan sizes its split-KV work for the planned lengths plus this headroom).
constexpr int32_t kPlanHeadroomTokens = 64;

int64_t blocks_for(int64_t n, int threads = kThreads) { return (n + threads - 1) / threads; }

#define FP8KV_CUBLAS_CHECK(call)                                                                    \
  do {                                                                                             \
    const cublasStatus_t status_ = (call);                                                         \
    if (status_ != CUBLAS_STATUS_SUCCESS) {                                                        \
      throw Error(std::string("fp8kv: cuBLAS error ") + cublasGetStatusString(status_) + " in " + #call); \
    }                                                                                              \
  } while (0)

class CudaBackend final : public Backend {
 public:
  CudaBackend() {
    FP8KV_CUBLAS_CHECK(cublasCreate(&cublas_));
    // Tensor-core GEMMs with float32 accumulation; no TF32 shortcuts on the float32 logits path.
    FP8KV_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    int device = 0, major = 0, minor = 0;
    FP8KV_CUDA_CHECK(cudaGetDevice(&device));
    FP8KV_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    FP8KV_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    sm90a_ = major == 9 && minor == 0;
  }
  ~CudaBackend() override { cublasDestroy(cublas_); }

  Device device() const override { return Device::kCuda; }
  const char* name() const override { return "cuda"; }
  DType activation_dtype() const override { return DType::kBFloat16; }
  DType weight_dtype() const override { return DType::kBFloat16; }

  void copy_from_host(const TensorRef& dst, const void* host) override {
    FP8KV_CUDA_CHECK(cudaMemcpy(dst.data, host, dst.nbytes(), cudaMemcpyHostToDevice));
  }
  void copy_to_host(void* host, const TensorRef& src) override {
    FP8KV_CUDA_CHECK(cudaMemcpy(host, src.data, src.nbytes(), cudaMemcpyDeviceToHost));
  }

  void fill_normal(const TensorRef& dst, uint64_t seed, float stddev) override {
    const int64_t n = dst.numel();
    if (dst.dtype == DType::kBFloat16) {
      engine_cuda::fill_normal_kernel<bf16><<<blocks_for(n), kThreads>>>(dst.ptr<bf16>(), n, seed, stddev);
    } else if (dst.dtype == DType::kFloat32) {
      engine_cuda::fill_normal_kernel<float><<<blocks_for(n), kThreads>>>(dst.ptr<float>(), n, seed, stddev);
    } else {
      throw InvalidArgument("dst", std::string("fill_normal fills bfloat16 or float32, got ") + dtype_name(dst.dtype));
    }
    FP8KV_CUDA_CHECK_LAUNCH();
  }

  void embed(const TensorRef& ids, const TensorRef& table, const TensorRef& out) override {
    const int vectors = static_cast<int>(table.size(1) * 2 / 16);
    engine_cuda::embed_kernel<<<ids.size(0), 128>>>(ids.ptr<int32_t>(), table.ptr<uint4>(), out.ptr<uint4>(), vectors);
    FP8KV_CUDA_CHECK_LAUNCH();
  }

  void rms_norm(const TensorRef& x, const TensorRef& weight, float eps, const TensorRef& out) override {
    const int dim = static_cast<int>(x.size(-1));
    const int64_t rows = x.numel() / dim;
    constexpr int kRowsPerBlock = 4;
    engine_cuda::rms_norm_kernel<<<blocks_for(rows, kRowsPerBlock), kRowsPerBlock * engine_cuda::kWarp>>>(
        x.ptr<bf16>(), weight.ptr<bf16>(), eps, out.ptr<bf16>(), rows, dim);
    FP8KV_CUDA_CHECK_LAUNCH();
  }

  void linear(const TensorRef& x, const TensorRef& w, const TensorRef& bias, const TensorRef& out) override {
    const int k = static_cast<int>(x.size(-1));
    const int m = static_cast<int>(x.numel() / k);
    const int n = static_cast<int>(w.size(0));
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t c_type = out.dtype == DType::kFloat32 ? CUDA_R_32F : CUDA_R_16BF;
    // Row-major out[m, n] = x[m, k] . w[n, k]^T is column-major out^T[n, m] = w^T . x^T.
    FP8KV_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w.data, CUDA_R_16BF, k, x.data,
                                    CUDA_R_16BF, k, &beta, out.data, c_type, n, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
    if (bias.defined()) {
      FP8KV_REQUIRE(out.dtype == DType::kBFloat16, "out", "a biased projection writes bfloat16 activations");
      const int64_t total = static_cast<int64_t>(m) * n;
      engine_cuda::add_kernel<<<blocks_for(total), kThreads>>>(out.ptr<bf16>(), bias.ptr<bf16>(), total, n);
      FP8KV_CUDA_CHECK_LAUNCH();
    }
  }

  void rope(const TensorRef& x, const TensorRef& positions, const TensorRef& cos_sin, int rotary_dim) override {
    const int64_t pairs = x.size(0) * x.size(1) * (rotary_dim / 2);
    engine_cuda::rope_kernel<<<blocks_for(pairs), kThreads>>>(x.ptr<bf16>(), positions.ptr<int32_t>(),
                                                              cos_sin.ptr<float>(), x.size(0),
                                                              static_cast<int>(x.size(1)),
                                                              static_cast<int>(x.size(2)), rotary_dim);
    FP8KV_CUDA_CHECK_LAUNCH();
  }

  void swiglu(const TensorRef& gate, const TensorRef& up, const TensorRef& out) override {
    const int64_t n = gate.numel();
    engine_cuda::swiglu_kernel<<<blocks_for(n), kThreads>>>(gate.ptr<bf16>(), up.ptr<bf16>(), out.ptr<bf16>(), n);
    FP8KV_CUDA_CHECK_LAUNCH();
  }

  void add(const TensorRef& x, const TensorRef& y) override {
    const int64_t n = x.numel();
    engine_cuda::add_kernel<<<blocks_for(n), kThreads>>>(x.ptr<bf16>(), y.ptr<bf16>(), n, 0);
    FP8KV_CUDA_CHECK_LAUNCH();
  }

  void gather_rows(const TensorRef& x, const TensorRef& rows, const TensorRef& out) override {
    const int64_t row_bytes = static_cast<int64_t>(x.nbytes()) / x.size(0);
    if (row_bytes % 16 == 0) {
      engine_cuda::gather_rows_kernel<uint4><<<rows.size(0), 128>>>(x.ptr<uint4>(), rows.ptr<int32_t>(),
                                                                   out.ptr<uint4>(), static_cast<int>(row_bytes / 16));
    } else {
      engine_cuda::gather_rows_kernel<uint16_t><<<rows.size(0), 128>>>(
          x.ptr<uint16_t>(), rows.ptr<int32_t>(), out.ptr<uint16_t>(), static_cast<int>(row_bytes / 2));
    }
    FP8KV_CUDA_CHECK_LAUNCH();
  }

  void write_kv_cache(const CacheWriteArgs& args) override { cuda::write_kv_cache(args); }

  void attention(const TensorRef& q, const PagedKvLayer& cache, const AttentionBatch& batch, float softmax_scale,
                 const TensorRef& out) override {
    const bool decode = batch.max_q_len == 1;
    if (!decode && prefill_path(cache) == PrefillPath::kFp8PagedPrefill) {
      fp8_paged_prefill(q, cache, batch, softmax_scale, out);
      return;
    }
    DecodeArgs args;
    args.q = q;
    args.cache = cache;
    args.block_tables = decode ? batch.block_tables : batch.row_block_tables;
    args.seq_lens = decode ? batch.seq_lens : batch.row_seq_lens;
    args.out = out;
    args.softmax_scale = softmax_scale;
    const std::vector<int32_t>& lens = decode ? batch.host_seq_lens : batch.host_row_seq_lens;
    if (batch.step != planned_step_) {
      planned_step_ = batch.step;
      if (!plan_covers(lens, cache)) {
        if (!cuda::decode_supported(cache.dtype, q.dtype, cache.layout.head_dim, static_cast<int>(q.size(1)),
                                    cache.layout.num_kv_heads)) {
          throw Unsupported(std::string("paged decode over a ") + kv_cache_dtype_name(cache.dtype) +
                            " cache with head_dim " + std::to_string(cache.layout.head_dim));
        }
        cuda::DecodePlanOptions options;
        options.headroom_tokens = kPlanHeadroomTokens;
        plan_.reset();
        plan_ = std::make_unique<cuda::DecodePlan>(args, lens, options);
        planned_lens_ = lens;
        planned_format_ = {cache.dtype, cache.granularity, cache.layout.block_size};
      }
    }
    plan_->run(args);
  }

  void argmax(const TensorRef& logits, const TensorRef& out) override {
    engine_cuda::argmax_kernel<<<logits.size(0), engine_cuda::kRowThreads>>>(logits.ptr<float>(), out.ptr<int32_t>(),
                                                                             logits.size(1));
    FP8KV_CUDA_CHECK_LAUNCH();
  }

  void fill_kv_random(const PagedKvLayer& layer, uint64_t seed) override {
    const int64_t n = layer.num_blocks * layer.layout.block_elements();
    for (void* pool : {layer.k, layer.v}) {
      ++seed;
      switch (layer.dtype) {
        case DType::kBFloat16:
          engine_cuda::fill_normal_kernel<bf16><<<blocks_for(n), kThreads>>>(static_cast<bf16*>(pool), n, seed, 1.0f);
          break;
        case DType::kFloat16:
          engine_cuda::fill_normal_kernel<Fp16><<<blocks_for(n), kThreads>>>(static_cast<Fp16*>(pool), n, seed, 1.0f);
          break;
        case DType::kFp8E4M3:
          engine_cuda::fill_normal_kernel<Fp8E4M3><<<blocks_for(n), kThreads>>>(static_cast<Fp8E4M3*>(pool), n, seed,
                                                                                1.0f);
          break;
        case DType::kFp8E5M2:
          engine_cuda::fill_normal_kernel<Fp8E5M2><<<blocks_for(n), kThreads>>>(static_cast<Fp8E5M2*>(pool), n, seed,
                                                                                1.0f);
          break;
        default: throw InvalidArgument("layer", "not a KV storage dtype");
      }
      FP8KV_CUDA_CHECK_LAUNCH();
    }
    if (layer.has_token_scales()) {
      const int64_t scales = layer.num_blocks * layer.layout.num_kv_heads * layer.layout.block_size;
      for (float* s : {layer.k_token_scale, layer.v_token_scale}) {
        engine_cuda::fill_constant_kernel<<<blocks_for(scales), kThreads>>>(s, scales, 1.0f);
        FP8KV_CUDA_CHECK_LAUNCH();
      }
    }
  }

  void synchronize() override { FP8KV_CUDA_CHECK(cudaDeviceSynchronize()); }

  void memory_info(int64_t& free_bytes, int64_t& total_bytes) const override {
    size_t f = 0, t = 0;
    FP8KV_CUDA_CHECK(cudaMemGetInfo(&f, &t));
    free_bytes = static_cast<int64_t>(f);
    total_bytes = static_cast<int64_t>(t);
  }

 private:
  enum class PrefillPath { kFp8PagedPrefill, kDecodeRows };

  // How a prefill chunk runs. The FP8 paged-prefill kernel reads FP8 E4M3 Q and an E4M3 cache on
  // Hopper's FP8 tensor cores, so it serves E4M3 caches of the head dims it was built for on an
  // sm_90a device. E5M2 and 16-bit caches have no paged-prefill kernel (it is built for E4M3
  // only; the BF16 prefill kernel is dense-only), so their chunks, and every chunk on another GPU,
  // run through the decode kernel one row per token: the same math, slower.
  PrefillPath prefill_path(const PagedKvLayer& cache) const {
    if (cache.dtype == DType::kFp8E4M3 && sm90a_ &&
        cuda::prefill_supported(DType::kFp8E4M3, cache.layout.head_dim, /*paged=*/true)) {
      return PrefillPath::kFp8PagedPrefill;
    }
    return PrefillPath::kDecodeRows;
  }

  // Q (bf16, RoPE already applied) -> E4M3 with one scale per KV-head group, the q_descale that
  // paged_prefill folds into the softmax scale; then the chunk's attention over the FP8 pages.
  void fp8_paged_prefill(const TensorRef& q, const PagedKvLayer& cache, const AttentionBatch& batch,
                         float softmax_scale, const TensorRef& out) {
    const int64_t total_q = q.size(0), heads = q.size(1), d = q.size(2);
    const int64_t groups = cache.layout.num_kv_heads;
    if (!q_fp8_.defined() || q_fp8_.numel() < q.numel()) {
      q_fp8_ = DeviceTensor(Device::kCuda, DType::kFp8E4M3, {q.numel()});
    }
    if (!q_scale_.defined() || q_scale_.numel() < groups) {
      q_scale_ = DeviceTensor(Device::kCuda, DType::kFloat32, {groups});
    }
    const TensorRef q8(q_fp8_.ref().data, DType::kFp8E4M3, {total_q, heads, d}, Device::kCuda);
    const TensorRef scale = q_scale_.rows(groups);
    cuda::quantize_heads(q, q8, scale, /*hadamard=*/false, 0);
    PagedPrefillArgs args = batch.prefill_args(q8, cache, softmax_scale, out);
    args.q_descale = scale;
    cuda::paged_prefill(args);
  }

  // A plan made for lengths L serves lengths in [L, L + headroom] of the same rows, over a cache of
  // the same format.
  bool plan_covers(const std::vector<int32_t>& lens, const PagedKvLayer& cache) const {
    if (!plan_ || lens.size() != planned_lens_.size()) return false;
    if (std::make_tuple(cache.dtype, cache.granularity, cache.layout.block_size) != planned_format_) return false;
    for (size_t i = 0; i < lens.size(); ++i) {
      if (lens[i] < planned_lens_[i] || lens[i] > planned_lens_[i] + kPlanHeadroomTokens) return false;
    }
    return true;
  }

  cublasHandle_t cublas_ = nullptr;
  int64_t planned_step_ = -1;
  std::unique_ptr<cuda::DecodePlan> plan_;
  std::vector<int32_t> planned_lens_;
  std::tuple<DType, ScaleGranularity, int32_t> planned_format_;
  bool sm90a_ = false;
  DeviceTensor q_fp8_, q_scale_;  // the quantised Q of a prefill chunk and its per-group scales
};

}  // namespace

bool cuda_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

std::unique_ptr<Backend> make_cuda_backend() {
  if (!cuda_available()) throw Unsupported("the CUDA backend: no CUDA device is visible");
  return std::make_unique<CudaBackend>();
}

}  // namespace fp8kv::engine
