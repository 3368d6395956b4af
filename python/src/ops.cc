// The attention operations for Python: cache write, paged decode, prefill, paged prefill, RoPE
// tables, quantisation and calibration.
//
// Each function builds the library's argument struct from DLPack arrays and hands it to the CPU
// reference (host arrays) or the CUDA kernels (device arrays, on the caller's stream). The GIL is
// released while the library runs: the reference can take seconds on long contexts, and a kernel
// launch must not block other Python threads.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "array.h"
#include "bindings.h"
#include "cache.h"
#include "fp8kv/attention.h"
#include "fp8kv/error.h"
#include "fp8kv/half.h"
#include "fp8kv/reference.h"
#include "fp8kv/scales.h"

#include "fp8kv/cuda_prefill.h"  // PrefillOptions (declarations only; a CPU build has them too)

#if defined(FP8KV_WITH_CUDA)
#include "fp8kv/cuda.h"
#endif

namespace nb = nanobind;

namespace fp8kv::python {
namespace {

// A cudaStream_t passed from Python as an integer (torch.cuda.current_stream().cuda_stream).
void* as_stream(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// Every CUDA array of one call must sit on the current device, where the kernels run.
void require_current_device(const TensorRef& t, const char* argument) {
  if (t.defined() && t.device == Device::kCuda) {
    const int current = current_cuda_device();
    FP8KV_REQUIRE(t.device_index == current, argument, "is on cuda:", t.device_index,
                  " but the current CUDA device is cuda:", current, "; make it current first");
  }
}

// The device the call runs on is the device of its first tensor (validate() checks the others).
bool runs_on_cuda(const TensorRef& first, const char* argument) {
  require_current_device(first, argument);
  return first.device == Device::kCuda;
}

[[noreturn]] void no_cuda_build(const char* what) {
  throw Unsupported(std::string(what) + " on CUDA arrays needs an fp8kv build with CUDA");
}

PagedKvLayer cache_layer(PyKvCache& cache, int layer) { return cache.layer(layer); }

void write_kv(PyKvCache& cache, int layer, const Array& key, const Array& value, const Array& slot_mapping,
              const std::optional<Array>& positions, const std::optional<Array>& rope, uintptr_t stream) {
  CacheWriteArgs args;
  args.key = to_tensor(key, "key");
  args.value = to_tensor(value, "value");
  args.slot_mapping = to_tensor(slot_mapping, "slot_mapping");
  args.positions = to_optional_tensor(positions, "positions");
  args.rope.cos_sin = to_optional_tensor(rope, "rope");
  args.cache = cache_layer(cache, layer);
  const bool cuda = runs_on_cuda(args.key, "key");
  nb::gil_scoped_release release;
  if (!cuda) {
    reference::write_kv_cache(args);
    return;
  }
#if defined(FP8KV_WITH_CUDA)
  cuda::write_kv_cache(args, as_stream(stream));
#else
  (void)stream;
  no_cuda_build("write_kv");
#endif
}

void paged_decode(PyKvCache& cache, int layer, const Array& q, const Array& block_tables, const Array& seq_lens,
                  const Array& out, float softmax_scale, uintptr_t stream) {
  DecodeArgs args;
  args.q = to_tensor(q, "q");
  args.cache = cache_layer(cache, layer);
  args.block_tables = to_tensor(block_tables, "block_tables");
  args.seq_lens = to_tensor(seq_lens, "seq_lens");
  args.out = to_tensor(out, "out");
  args.softmax_scale = softmax_scale;
  const bool cuda = runs_on_cuda(args.q, "q");
  nb::gil_scoped_release release;
  if (!cuda) {
    reference::paged_decode(args);
    return;
  }
#if defined(FP8KV_WITH_CUDA)
  cuda::paged_decode(args, as_stream(stream));
#else
  (void)stream;
  no_cuda_build("paged_decode");
#endif
}

// The CUDA prefill options from Python (None = the library's default), checked on every path: the
// CPU reference has no such choices, but a bad value is an error there too.
cuda::PrefillOptions prefill_options(bool two_level_accumulation, const std::optional<int>& one_level_max_keys,
                                     int key_tile = 0, int query_tile = 0) {
  cuda::PrefillOptions options;
  options.two_level_accumulation = two_level_accumulation;
  options.one_level_max_keys = one_level_max_keys.value_or(options.one_level_max_keys);
  options.key_tile = key_tile;
  options.query_tile = query_tile;
  options.validate();
  return options;
}

void prefill(const Array& q, const Array& k, const Array& v, const Array& cu_seqlens_q, const Array& cu_seqlens_k,
             const Array& out, float softmax_scale, bool causal, const std::optional<Array>& q_descale,
             const std::optional<Array>& k_descale, const std::optional<Array>& v_descale,
             const std::optional<std::string>& fp8_dtype, bool two_level_accumulation,
             const std::optional<int>& one_level_max_keys, int key_tile, int query_tile, uintptr_t stream) {
  const cuda::PrefillOptions options =
      prefill_options(two_level_accumulation, one_level_max_keys, key_tile, query_tile);
  const std::optional<DType> fp8 = parse_fp8_dtype(fp8_dtype);
  PrefillArgs args;
  args.q = to_tensor(q, "q", fp8);
  args.k = to_tensor(k, "k", fp8);
  args.v = to_tensor(v, "v", fp8);
  args.cu_seqlens_q = to_tensor(cu_seqlens_q, "cu_seqlens_q");
  args.cu_seqlens_k = to_tensor(cu_seqlens_k, "cu_seqlens_k");
  args.out = to_tensor(out, "out");
  args.softmax_scale = softmax_scale;
  args.causal = causal;
  args.q_descale = to_optional_tensor(q_descale, "q_descale");
  args.k_descale = to_optional_tensor(k_descale, "k_descale");
  args.v_descale = to_optional_tensor(v_descale, "v_descale");
  const bool cuda = runs_on_cuda(args.q, "q");
  nb::gil_scoped_release release;
  if (!cuda) {
    reference::prefill(args);
    return;
  }
#if defined(FP8KV_WITH_CUDA)
  cuda::prefill(args, options, as_stream(stream));
#else
  (void)options;
  (void)stream;
  no_cuda_build("prefill");
#endif
}

void paged_prefill(PyKvCache& cache, int layer, const Array& q, const Array& block_tables, const Array& cu_seqlens_q,
                   const Array& seq_lens, const Array& out, float softmax_scale, const std::optional<Array>& q_descale,
                   const std::optional<std::string>& fp8_dtype, bool two_level_accumulation,
                   const std::optional<int>& one_level_max_keys, uintptr_t stream) {
  const cuda::PrefillOptions options = prefill_options(two_level_accumulation, one_level_max_keys);
  PagedPrefillArgs args;
  args.q = to_tensor(q, "q", parse_fp8_dtype(fp8_dtype));
  args.cache = cache_layer(cache, layer);
  args.block_tables = to_tensor(block_tables, "block_tables");
  args.cu_seqlens_q = to_tensor(cu_seqlens_q, "cu_seqlens_q");
  args.seq_lens = to_tensor(seq_lens, "seq_lens");
  args.out = to_tensor(out, "out");
  args.softmax_scale = softmax_scale;
  args.q_descale = to_optional_tensor(q_descale, "q_descale");
  const bool cuda = runs_on_cuda(args.q, "q");
  nb::gil_scoped_release release;
  if (!cuda) {
    reference::paged_prefill(args);
    return;
  }
#if defined(FP8KV_WITH_CUDA)
  cuda::paged_prefill(args, options, as_stream(stream));
#else
  (void)options;
  (void)stream;
  no_cuda_build("paged_prefill");
#endif
}

void rope_quantize(PyKvCache& cache, int layer, const Array& q, const Array& k, const Array& v,
                   const Array& positions, const Array& rope, const Array& slot_mapping, const Array& q_out,
                   const Array& q_scale, bool incoherent_processing, uint64_t hadamard_seed, uintptr_t stream) {
#if defined(FP8KV_WITH_CUDA)
  cuda::RopeQuantizeArgs args;
  args.q = to_tensor(q, "q");
  args.k = to_tensor(k, "k");
  args.v = to_tensor(v, "v");
  args.positions = to_tensor(positions, "positions");
  args.rope.cos_sin = to_tensor(rope, "rope");
  args.slot_mapping = to_tensor(slot_mapping, "slot_mapping");
  args.cache = cache_layer(cache, layer);
  args.q_out = to_tensor(q_out, "q_out", DType::kFp8E4M3);
  args.q_scale = to_tensor(q_scale, "q_scale");
  FP8KV_REQUIRE(runs_on_cuda(args.q, "q"), "q",
                "rope_quantize is the CUDA prefill path's fused step; on the CPU use write_kv (RoPE on K) and "
                "quantize (Q) from the reference");
  cuda::PrefillOptions options;
  options.incoherent_processing = incoherent_processing;
  options.hadamard_seed = hadamard_seed;
  nb::gil_scoped_release release;
  cuda::rope_quantize(args, options, as_stream(stream));
#else
  (void)cache, (void)layer, (void)q, (void)k, (void)v, (void)positions, (void)rope, (void)slot_mapping;
  (void)q_out, (void)q_scale, (void)incoherent_processing, (void)hadamard_seed, (void)stream;
  no_cuda_build("rope_quantize");
#endif
}

void quantize(const Array& x, const Array& out, const std::string& kv_scales, const Array& scales,
              const std::string& fp8_dtype) {
  const TensorRef xt = to_tensor(x, "x");
  const TensorRef ot = to_tensor(out, "out", parse_fp8_dtype(fp8_dtype));
  const TensorRef st = to_tensor(scales, "scales");
  FP8KV_REQUIRE(!runs_on_cuda(xt, "x"), "x",
                "quantize is the CPU reference's; on CUDA use quantize_heads (scales computed on the device)");
  const ScaleGranularity g = parse_scale_granularity(kv_scales, "kv_scales");
  nb::gil_scoped_release release;
  reference::quantize(xt, ot, g, st);
}

void quantize_heads(const Array& x, const Array& out, const Array& scale, bool incoherent_processing,
                    uint64_t hadamard_seed, uintptr_t stream) {
  const TensorRef xt = to_tensor(x, "x");
  const TensorRef ot = to_tensor(out, "out", DType::kFp8E4M3);
  const TensorRef st = to_tensor(scale, "scale");
  FP8KV_REQUIRE(runs_on_cuda(xt, "x"), "x",
                "quantize_heads runs on CUDA tensors; on the CPU use quantize (the reference)");
#if defined(FP8KV_WITH_CUDA)
  nb::gil_scoped_release release;
  cuda::quantize_heads(xt, ot, st, incoherent_processing, hadamard_seed, as_stream(stream));
#else
  (void)ot, (void)st, (void)incoherent_processing, (void)hadamard_seed, (void)stream;
  no_cuda_build("quantize_heads");
#endif
}

void dequantize(const Array& x, const Array& out, const std::string& kv_scales, const Array& scales,
                const std::string& fp8_dtype) {
  const TensorRef xt = to_tensor(x, "x", parse_fp8_dtype(fp8_dtype));
  const TensorRef ot = to_tensor(out, "out");
  const TensorRef st = to_tensor(scales, "scales");
  FP8KV_REQUIRE(!runs_on_cuda(xt, "x"), "x", "dequantize is the CPU reference's; pass host arrays");
  const ScaleGranularity g = parse_scale_granularity(kv_scales, "kv_scales");
  nb::gil_scoped_release release;
  reference::dequantize(xt, ot, g, st);
}

// Values of one row of a host tensor as float32 (the dtypes a K/V activation can have).
void row_as_float(const TensorRef& t, int64_t offset, int64_t count, std::vector<float>& row) {
  row.resize(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const int64_t e = offset + i;
    switch (t.dtype) {
      case DType::kFloat32: row[static_cast<size_t>(i)] = t.ptr<const float>()[e]; break;
      case DType::kBFloat16: row[static_cast<size_t>(i)] = t.ptr<const Bf16>()[e].to_float(); break;
      case DType::kFloat16: row[static_cast<size_t>(i)] = t.ptr<const Fp16>()[e].to_float(); break;
      default: break;
    }
  }
}

// Calibration amax of a host tensor [num_tokens, num_heads, head_dim]: one value (per_tensor) or
// one per head (per_head). NaN or inf is an error (amax_of's rule): a scale from them is garbage.
std::vector<float> amax(const Array& x, bool per_head) {
  const TensorRef t = to_tensor(x, "x");
  FP8KV_REQUIRE(t.device == Device::kCpu, "x",
                "the C++ amax reads host memory; the Python wrapper reduces CUDA tensors on the device");
  check_dtype(t, "x", {DType::kFloat32, DType::kBFloat16, DType::kFloat16});
  if (!per_head) {
    std::vector<float> all;
    row_as_float(t, 0, t.numel(), all);
    return {amax_of(all.data(), t.numel(), "x")};
  }
  check_shape(t, "x", {-1, -1, -1}, "[num_tokens, num_heads, head_dim]");
  const int64_t tokens = t.size(0), heads = t.size(1), dim = t.size(2);
  std::vector<float> result(static_cast<size_t>(heads), 0.0f);
  std::vector<float> row;
  for (int64_t i = 0; i < tokens; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      row_as_float(t, (i * heads + h) * dim, dim, row);
      result[static_cast<size_t>(h)] = std::max(result[static_cast<size_t>(h)], amax_of(row.data(), dim, "x"));
    }
  }
  return result;
}

}  // namespace

void bind_ops(nb::module_& m) {
  m.def("write_kv", &write_kv, nb::arg("cache"), nb::arg("layer"), nb::arg("key"), nb::arg("value"),
        nb::arg("slot_mapping"), nb::arg("positions") = nb::none(), nb::arg("rope") = nb::none(),
        nb::arg("stream") = 0);
  m.def("paged_decode", &paged_decode, nb::arg("cache"), nb::arg("layer"), nb::arg("q"), nb::arg("block_tables"),
        nb::arg("seq_lens"), nb::arg("out"), nb::arg("softmax_scale"), nb::arg("stream") = 0);
  m.def("prefill", &prefill, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("cu_seqlens_q"),
        nb::arg("cu_seqlens_k"), nb::arg("out"), nb::arg("softmax_scale"), nb::arg("causal") = true,
        nb::arg("q_descale") = nb::none(), nb::arg("k_descale") = nb::none(), nb::arg("v_descale") = nb::none(),
        nb::arg("fp8_dtype") = nb::none(), nb::arg("two_level_accumulation") = true,
        nb::arg("one_level_max_keys") = nb::none(), nb::arg("key_tile") = 0, nb::arg("query_tile") = 0,
        nb::arg("stream") = 0);
  m.def("paged_prefill", &paged_prefill, nb::arg("cache"), nb::arg("layer"), nb::arg("q"), nb::arg("block_tables"),
        nb::arg("cu_seqlens_q"), nb::arg("seq_lens"), nb::arg("out"), nb::arg("softmax_scale"),
        nb::arg("q_descale") = nb::none(), nb::arg("fp8_dtype") = nb::none(),
        nb::arg("two_level_accumulation") = true, nb::arg("one_level_max_keys") = nb::none(),
        nb::arg("stream") = 0);
  m.def("rope_quantize", &rope_quantize, nb::arg("cache"), nb::arg("layer"), nb::arg("q"), nb::arg("k"),
        nb::arg("v"), nb::arg("positions"), nb::arg("rope"), nb::arg("slot_mapping"), nb::arg("q_out"),
        nb::arg("q_scale"), nb::arg("incoherent_processing") = false, nb::arg("hadamard_seed") = 0x5eed5eedull,
        nb::arg("stream") = 0);
  m.def("quantize", &quantize, nb::arg("x"), nb::arg("out"), nb::arg("kv_scales"), nb::arg("scales"),
        nb::arg("fp8_dtype"));
  m.def("quantize_heads", &quantize_heads, nb::arg("x"), nb::arg("out"), nb::arg("scale"),
        nb::arg("incoherent_processing") = false, nb::arg("hadamard_seed") = 0x5eed5eedull, nb::arg("stream") = 0);
  m.def("dequantize", &dequantize, nb::arg("x"), nb::arg("out"), nb::arg("kv_scales"), nb::arg("scales"),
        nb::arg("fp8_dtype"));
  m.def("amax", &amax, nb::arg("x"), nb::arg("per_head") = false);
  m.def(
      "scale_from_amax",
      [](float amax_value, const std::string& kv_cache_dtype) {
        FP8KV_REQUIRE(std::isfinite(amax_value) && amax_value >= 0.0f, "amax", "must be finite and >= 0, got ",
                      amax_value);
        const DType t = parse_kv_cache_dtype(kv_cache_dtype, DType::kBFloat16, "kv_cache_dtype");
        FP8KV_REQUIRE(is_fp8(t), "kv_cache_dtype", "scales exist for FP8 storage only, got '", kv_cache_dtype, "'");
        return scale_from_amax(amax_value, fp8_max(t));
      },
      nb::arg("amax"), nb::arg("kv_cache_dtype") = "fp8");
  m.def(
      "rope_table",
      [](int max_position, int rotary_dim, double theta, double llama3_factor, double llama3_low_freq_factor,
         double llama3_high_freq_factor, int llama3_original_max_position) {
        RopeConfig config;
        config.theta = theta;
        config.rotary_dim = rotary_dim;
        config.llama3_factor = llama3_factor;
        config.llama3_low_freq_factor = llama3_low_freq_factor;
        config.llama3_high_freq_factor = llama3_high_freq_factor;
        config.llama3_original_max_position = llama3_original_max_position;
        auto* table = new std::vector<float>(build_rope_table(config, max_position));
        nb::capsule owner(table, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
        return nb::ndarray<nb::numpy, float>(
            table->data(), {static_cast<size_t>(max_position), static_cast<size_t>(rotary_dim)}, owner);
      },
      nb::arg("max_position"), nb::arg("rotary_dim"), nb::arg("theta") = 10000.0, nb::arg("llama3_factor") = 0.0,
      nb::arg("llama3_low_freq_factor") = 1.0, nb::arg("llama3_high_freq_factor") = 4.0,
      nb::arg("llama3_original_max_position") = 8192);
}

}  // namespace fp8kv::python
