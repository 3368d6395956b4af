// The CPU backend: float32 activations and weights (converted from bf16/fp16 once at load), GEMMs
// through OpenBLAS, attention through the CPU reference over the same paged cache the GPU uses.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "fp8kv/engine/backend.h"
#include "fp8kv/engine/sampling.h"
#include "fp8kv/error.h"
#include "fp8kv/fp8.h"
#include "fp8kv/reference.h"

#ifdef FP8KV_WITH_BLAS
#include <cblas.h>
#endif

namespace fp8kv::engine {
namespace {

float* f32(const TensorRef& t) { return t.ptr<float>(); }

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::kCpu; }
  const char* name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::kFloat32; }
  DType weight_dtype() const override { return DType::kFloat32; }

  void copy_from_host(const TensorRef& dst, const void* host) override { std::memcpy(dst.data, host, dst.nbytes()); }
  void copy_to_host(void* host, const TensorRef& src) override { std::memcpy(host, src.data, src.nbytes()); }

  void fill_normal(const TensorRef& dst, uint64_t seed, float stddev) override {
    FP8KV_REQUIRE(dst.dtype == DType::kFloat32, "dst", "the CPU backend fills float32 tensors only");
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, stddev);
    float* p = f32(dst);
    for (int64_t i = 0; i < dst.numel(); ++i) p[i] = normal(rng);
  }

  void embed(const TensorRef& ids, const TensorRef& table, const TensorRef& out) override {
    const int64_t hidden = table.size(1);
    for (int64_t i = 0; i < ids.size(0); ++i) {
      const int32_t id = ids.ptr<int32_t>()[i];
      std::memcpy(f32(out) + i * hidden, f32(table) + id * hidden, static_cast<size_t>(hidden) * sizeof(float));
    }
  }

  void rms_norm(const TensorRef& x, const TensorRef& weight, float eps, const TensorRef& out) override {
    const int64_t dim = x.size(-1);
    const int64_t rows = x.numel() / dim;
    const float* w = f32(weight);
    for (int64_t r = 0; r < rows; ++r) {
      const float* in = f32(x) + r * dim;
      float* o = f32(out) + r * dim;
      double sum = 0.0;
      for (int64_t c = 0; c < dim; ++c) sum += static_cast<double>(in[c]) * in[c];
      const float inv = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(dim) + eps));
      for (int64_t c = 0; c < dim; ++c) o[c] = in[c] * inv * w[c];
    }
  }

  // One matrix-vector product per row (sgemv): every row goes through the same BLAS call whatever
  // the batch. OpenBLAS's sgemm picks kernels, and with them the accumulation order, by matrix size
  // and by a row's position in its tile, so a row's logits would otherwise depend on which other
  // requests share its step, and the engine promises a request the tokens it gets alone. The cost:
  // the weights are streamed once per row, acceptable for the CPU backend's role (the oracle and
  // small models).
  void linear(const TensorRef& x, const TensorRef& w, const TensorRef& bias, const TensorRef& out) override {
    const int64_t m = x.numel() / x.size(-1), k = x.size(-1), n = w.size(0);
    const float* b = f32(w);
    for (int64_t row = 0; row < m; ++row) {
      const float* a = f32(x) + row * k;
      float* c = f32(out) + row * n;
#ifdef FP8KV_WITH_BLAS
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(n), static_cast<int>(k), 1.0f, b, static_cast<int>(k),
                  a, 1, 0.0f, c, 1);
#else
      // Without BLAS (CMake found none) the same product as a plain float32 loop: slow, same math.
      for (int64_t j = 0; j < n; ++j) {
        float acc = 0.0f;
        for (int64_t p = 0; p < k; ++p) acc += a[p] * b[j * k + p];
        c[j] = acc;
      }
#endif
      if (bias.defined()) {
        for (int64_t j = 0; j < n; ++j) c[j] += f32(bias)[j];
      }
    }
  }

  void rope(const TensorRef& x, const TensorRef& positions, const TensorRef& cos_sin, int rotary_dim) override {
    reference::apply_rope(f32(x), x.size(0), static_cast<int>(x.size(1)), static_cast<int>(x.size(2)),
                          positions.ptr<int32_t>(), f32(cos_sin), rotary_dim);
  }

  void swiglu(const TensorRef& gate, const TensorRef& up, const TensorRef& out) override {
    const float* g = f32(gate);
    const float* u = f32(up);
    float* o = f32(out);
    for (int64_t i = 0; i < gate.numel(); ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }

  void add(const TensorRef& x, const TensorRef& y) override {
    for (int64_t i = 0; i < x.numel(); ++i) f32(x)[i] += f32(y)[i];
  }

  void gather_rows(const TensorRef& x, const TensorRef& rows, const TensorRef& out) override {
    const int64_t dim = x.numel() / x.size(0);
    for (int64_t i = 0; i < rows.size(0); ++i) {
      std::memcpy(f32(out) + i * dim, f32(x) + rows.ptr<int32_t>()[i] * dim, static_cast<size_t>(dim) * sizeof(float));
    }
  }

  void write_kv_cache(const CacheWriteArgs& args) override { reference::write_kv_cache(args); }

  void attention(const TensorRef& q, const PagedKvLayer& cache, const AttentionBatch& batch, float softmax_scale,
                 const TensorRef& out) override {
    reference::paged_prefill(batch.prefill_args(q, cache, softmax_scale, out));
  }

  void argmax(const TensorRef& logits, const TensorRef& out) override {
    const int64_t vocab = logits.size(1);
    for (int64_t i = 0; i < logits.size(0); ++i) out.ptr<int32_t>()[i] = engine::argmax(f32(logits) + i * vocab, vocab);
  }

  void fill_kv_random(const PagedKvLayer& layer, uint64_t seed) override {
    const int64_t count = layer.num_blocks * layer.layout.block_elements();
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (void* pool : {layer.k, layer.v}) {
      for (int64_t i = 0; i < count; ++i) {
        const float x = normal(rng);
        switch (layer.dtype) {
          case DType::kBFloat16: static_cast<Bf16*>(pool)[i] = Bf16::from_float(x); break;
          case DType::kFloat16: static_cast<Fp16*>(pool)[i] = Fp16::from_float(x); break;
          case DType::kFp8E4M3: static_cast<Fp8E4M3*>(pool)[i] = Fp8E4M3::from_float(x); break;
          case DType::kFp8E5M2: static_cast<Fp8E5M2*>(pool)[i] = Fp8E5M2::from_float(x); break;
          default: throw InvalidArgument("layer", "not a KV storage dtype");
        }
      }
    }
    if (layer.has_token_scales()) {
      const int64_t scales = layer.num_blocks * layer.layout.num_kv_heads * layer.layout.block_size;
      std::fill(layer.k_token_scale, layer.k_token_scale + scales, 1.0f);
      std::fill(layer.v_token_scale, layer.v_token_scale + scales, 1.0f);
    }
  }

  void synchronize() override {}

  void memory_info(int64_t& free_bytes, int64_t& total_bytes) const override {
    // The CPU cache is sized from --kv-cache-memory; the host's free memory is not a budget.
    free_bytes = 0;
    total_bytes = 0;
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace fp8kv::engine
