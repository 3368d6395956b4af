// The memory planner and the dtype / granularity names, as Python sees them.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>

#include <cstdint>
#include <string>
#include <variant>

#include "array.h"
#include "bindings.h"
#include "fp8kv/dtype.h"
#include "fp8kv/planner.h"
#include "fp8kv/scales.h"

namespace nb = nanobind;

namespace fp8kv::python {

void bind_planner(nb::module_& m) {
  nb::class_<ModelShape>(m, "ModelShape",
                         "The attention-relevant shape of a decoder-only model (layers, heads, head_dim, dtype).")
      .def(nb::init<>())
      .def_rw("name", &ModelShape::name)
      .def_rw("num_layers", &ModelShape::num_layers)
      .def_rw("num_q_heads", &ModelShape::num_q_heads)
      .def_rw("num_kv_heads", &ModelShape::num_kv_heads)
      .def_rw("head_dim", &ModelShape::head_dim)
      .def_prop_rw(
          "dtype", [](const ModelShape& s) { return std::string(dtype_name(s.dtype)); },
          [](ModelShape& s, const std::string& name) { s.dtype = parse_dtype(name, "dtype"); },
          "The model's activation dtype: 'bfloat16', 'float16' or 'float32'.")
      .def_rw("max_position", &ModelShape::max_position)
      .def("__repr__", [](const ModelShape& s) {
        return "ModelShape(name='" + s.name + "', num_layers=" + std::to_string(s.num_layers) +
               ", num_q_heads=" + std::to_string(s.num_q_heads) + ", num_kv_heads=" + std::to_string(s.num_kv_heads) +
               ", head_dim=" + std::to_string(s.head_dim) + ", dtype='" + dtype_name(s.dtype) + "')";
      });

  m.def("model_preset", &model_preset, nb::arg("name"),
        "A built-in model shape: 'qwen3-0.6b', 'qwen3-8b', 'llama-3.1-8b', 'llama-3.1-70b'.");
  m.def("model_shape_from_config", &model_shape_from_config, nb::arg("config_json_path"),
        "Reads a Hugging Face config.json (layers, heads, head_dim, dtype, max positions).");
  m.def("resolve_model_shape", &resolve_model_shape, nb::arg("name_or_path"),
        "A preset name, a config.json path, or a model directory holding config.json.");

  nb::class_<KvPlan>(m, "KvPlan", "How many KV tokens fit in a memory budget; byte counts equal what KvCache allocates.")
      .def_prop_ro("kv_cache_dtype", [](const KvPlan& p) { return std::string(kv_cache_dtype_name(p.dtype)); })
      .def_prop_ro("kv_scales", [](const KvPlan& p) { return std::string(scale_granularity_name(p.granularity)); })
      .def_ro("block_size", &KvPlan::block_size)
      .def_ro("budget_bytes", &KvPlan::budget_bytes)
      .def_ro("bytes_per_token", &KvPlan::bytes_per_token)
      .def_ro("bytes_per_block", &KvPlan::bytes_per_block)
      .def_ro("token_scale_bytes_per_token", &KvPlan::token_scale_bytes_per_token)
      .def_ro("fixed_bytes", &KvPlan::fixed_bytes)
      .def_ro("num_blocks", &KvPlan::num_blocks)
      .def_ro("max_tokens", &KvPlan::max_tokens)
      .def_ro("total_bytes", &KvPlan::total_bytes)
      .def("max_sequences", &KvPlan::max_sequences, nb::arg("context"),
           "Sequences of `context` tokens that fit at once.")
      .def("__repr__", [](const KvPlan& p) {
        return "KvPlan(kv_cache_dtype='" + std::string(kv_cache_dtype_name(p.dtype)) + "', kv_scales='" +
               scale_granularity_name(p.granularity) + "', block_size=" + std::to_string(p.block_size) +
               ", num_blocks=" + std::to_string(p.num_blocks) + ", max_tokens=" + std::to_string(p.max_tokens) +
               ", total_bytes=" + std::to_string(p.total_bytes) + ")";
      });

  m.def(
      "plan_kv_cache",
      [](const ModelShape& model, const std::variant<int64_t, std::string>& budget, const std::string& kv_cache_dtype,
         const std::string& kv_scales, int block_size) {
        const int64_t bytes = std::holds_alternative<int64_t>(budget)
                                  ? std::get<int64_t>(budget)
                                  : parse_memory_size(std::get<std::string>(budget), "budget");
        const DType dtype = parse_kv_cache_dtype(kv_cache_dtype, model.dtype, "kv_cache_dtype");
        const ScaleGranularity granularity = parse_scale_granularity(kv_scales, "kv_scales");
        return plan_kv_cache(model, bytes, dtype, granularity, block_size);
      },
      nb::arg("model"), nb::arg("budget"), nb::arg("kv_cache_dtype") = "fp8", nb::arg("kv_scales") = "per_tensor",
      nb::arg("block_size") = 16,
      "Plans a paged KV cache for `model` in `budget` bytes (an int, or a string such as '40GiB').");

  m.def("parse_memory_size", [](const std::string& text) { return parse_memory_size(text, "memory"); },
        nb::arg("text"), "'40GiB', '512MiB', '1.5GB', '1073741824' -> bytes.");
  m.def(
      "kv_cache_dtype_name",
      [](const std::string& name, const std::string& model_dtype) {
        return std::string(kv_cache_dtype_name(parse_kv_cache_dtype(name, parse_dtype(model_dtype, "model_dtype"))));
      },
      nb::arg("kv_cache_dtype"), nb::arg("model_dtype") = "bfloat16",
      "Canonical storage name of a vLLM-style --kv-cache-dtype ('auto', 'fp8', 'fp8_e4m3', 'fp8_e5m2', ...).");
}

}  // namespace fp8kv::python
