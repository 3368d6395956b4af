// KvCache: the paged cache (pools, scales) and its block allocator, for Python.
#include "cache.h"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#if defined(FP8KV_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "array.h"
#include "bindings.h"
#include "fp8kv/error.h"
#include "fp8kv/planner.h"

namespace nb = nanobind;

namespace fp8kv::python {

int current_cuda_device() {
#if defined(FP8KV_WITH_CUDA)
  int device = 0;
  const cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) {
    throw Unsupported(std::string("no usable CUDA device: ") + cudaGetErrorString(status));
  }
  return device;
#else
  throw Unsupported("this fp8kv build has no CUDA support (rebuild with CUDA available)");
#endif
}

std::pair<Device, int> parse_device(const std::string& name) {
  if (name == "cpu") return {Device::kCpu, 0};
  FP8KV_REQUIRE(name.rfind("cuda", 0) == 0, "device", "must be 'cpu', 'cuda' or 'cuda:N', got '", name, "'");
  const int current = current_cuda_device();
  if (name == "cuda") return {Device::kCuda, current};
  FP8KV_REQUIRE(name.size() > 5 && name[4] == ':' &&
                    std::all_of(name.begin() + 5, name.end(), [](char c) { return c >= '0' && c <= '9'; }),
                "device", "must be 'cpu', 'cuda' or 'cuda:N', got '", name, "'");
  const int index = std::stoi(name.substr(5));
  FP8KV_REQUIRE(index == current, "device", "'", name, "' is not the current CUDA device (cuda:", current,
                "); make it current first (torch.cuda.set_device(", index, "))");
  return {Device::kCuda, index};
}

namespace {

constexpr int kDLCpu = 1;
constexpr int kDLCuda = 2;

// A NumPy array owning `values` (moved to the heap and freed with the array).
template <typename T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T> values, std::initializer_list<size_t> shape) {
  auto* heap = new std::vector<T>(std::move(values));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(heap->data(), shape, owner);
}

// A zero-copy view of cache memory, kept alive by the Python cache object: a NumPy array for a
// host cache, a DLPack object (torch.from_dlpack / cupy.from_dlpack) for a CUDA cache.
nb::object view(PyKvCache& cache, void* data, const std::vector<size_t>& shape, nb::dlpack::dtype dtype) {
  nb::object owner = nb::find(&cache);
  if (cache.device() == Device::kCpu) {
    return nb::cast(nb::ndarray<nb::numpy>(data, shape.size(), shape.data(), owner, nullptr, dtype, kDLCpu, 0));
  }
  return nb::cast(Array(data, shape.size(), shape.data(), owner, nullptr, dtype, kDLCuda, cache.device_index()));
}

// Pool elements are exposed as unsigned integers of the storage width (uint8 for FP8, uint16 for
// bf16/fp16): DLPack consumers without float8 support still import them, and the Python layer
// reinterprets them (tensor.view(torch.float8_e4m3fn)) without a copy.
nb::dlpack::dtype storage_bits_dtype(DType storage) {
  return nb::dlpack::dtype{static_cast<uint8_t>(nb::dlpack::dtype_code::UInt),
                           static_cast<uint8_t>(dtype_size(storage) * 8), 1};
}

// A layer's pool (with head_dim) or per-token scale buffer (without) as its physical array
// (paged_cache.h): [num_blocks, num_kv_heads, block_size(, head_dim)] when blocks are whole
// head-major runs (16-bit storage, FP8 blocks of up to 16 tokens), else
// [num_blocks, block_size / sub_block_size, num_kv_heads, sub_block_size(, head_dim)].
std::vector<size_t> physical_shape(const PagedKvLayer& l, bool with_head_dim) {
  const PagedLayout& layout = l.layout;
  std::vector<size_t> shape{static_cast<size_t>(l.num_blocks)};
  if (layout.sub_block_size != layout.block_size) {
    shape.push_back(static_cast<size_t>(layout.block_size / layout.sub_block_size));
  }
  shape.push_back(static_cast<size_t>(layout.num_kv_heads));
  shape.push_back(static_cast<size_t>(layout.sub_block_size));
  if (with_head_dim) shape.push_back(static_cast<size_t>(layout.head_dim));
  return shape;
}

nb::object pool_view(PyKvCache& cache, int layer, bool key) {
  const PagedKvLayer l = cache.layer(layer);
  return view(cache, key ? l.k : l.v, physical_shape(l, true), storage_bits_dtype(l.dtype));
}

std::optional<nb::object> token_scale_view(PyKvCache& cache, int layer, bool key) {
  const PagedKvLayer l = cache.layer(layer);
  if (!l.has_token_scales()) return std::nullopt;
  return view(cache, key ? l.k_token_scale : l.v_token_scale, physical_shape(l, false), nb::dtype<float>());
}

PyKvCache* make_cache(const KvCacheSpec& spec, const std::string& device) {
  const auto [dev, index] = parse_device(device);
  return new PyKvCache(spec, dev, index);
}

KvCacheSpec make_spec(int num_layers, int num_kv_heads, int head_dim, int64_t num_blocks, int block_size,
                      const std::string& kv_cache_dtype, const std::string& kv_scales, const std::string& model_dtype) {
  KvCacheSpec spec;
  spec.num_layers = num_layers;
  spec.num_kv_heads = num_kv_heads;
  spec.head_dim = head_dim;
  spec.num_blocks = num_blocks;
  spec.block_size = block_size;
  spec.dtype = parse_kv_cache_dtype(kv_cache_dtype, parse_dtype(model_dtype, "model_dtype"));
  spec.granularity = parse_scale_granularity(kv_scales, "kv_scales");
  return spec;
}

}  // namespace

void bind_cache(nb::module_& m) {
  // The constructor's argument checks as a plain function: the Python KvCache runs it before
  // __init__, so a bad argument is raised before any instance exists.
  m.def(
      "check_cache_args",
      [](int num_layers, int num_kv_heads, int head_dim, int64_t num_blocks, int block_size,
         const std::string& kv_cache_dtype, const std::string& kv_scales, const std::string& device,
         const std::string& model_dtype) {
        make_spec(num_layers, num_kv_heads, head_dim, num_blocks, block_size, kv_cache_dtype, kv_scales, model_dtype)
            .validate();
        parse_device(device);
      },
      nb::arg("num_layers"), nb::arg("num_kv_heads"), nb::arg("head_dim"), nb::arg("num_blocks"),
      nb::arg("block_size") = 16, nb::arg("kv_cache_dtype") = "fp8", nb::arg("kv_scales") = "per_tensor",
      nb::arg("device") = "cpu", nb::arg("model_dtype") = "bfloat16");
  nb::class_<PyKvCache>(m, "KvCache",
                        "A paged KV cache that owns its memory (every layer's K/V pools, per-token scales, "
                        "static scales) and its block allocator.")
      .def(
          "__init__",
          [](PyKvCache* self, int num_layers, int num_kv_heads, int head_dim, int64_t num_blocks, int block_size,
             const std::string& kv_cache_dtype, const std::string& kv_scales, const std::string& device,
             const std::string& model_dtype) {
            const KvCacheSpec spec =
                make_spec(num_layers, num_kv_heads, head_dim, num_blocks, block_size, kv_cache_dtype, kv_scales, model_dtype);
            const auto [dev, index] = parse_device(device);
            new (self) PyKvCache(spec, dev, index);
          },
          nb::arg("num_layers"), nb::arg("num_kv_heads"), nb::arg("head_dim"), nb::arg("num_blocks"),
          nb::arg("block_size") = 16, nb::arg("kv_cache_dtype") = "fp8", nb::arg("kv_scales") = "per_tensor",
          nb::arg("device") = "cpu", nb::arg("model_dtype") = "bfloat16")
      .def_static(
          "from_plan",
          [](const KvPlan& plan, const ModelShape& model, const std::string& device) {
            return make_cache(kv_cache_spec(plan, model), device);
          },
          nb::arg("plan"), nb::arg("model"), nb::arg("device") = "cpu",
          "Allocates the cache a plan describes (allocated_bytes == plan.total_bytes).")
      .def_prop_ro("num_layers", [](const PyKvCache& c) { return c.spec().num_layers; })
      .def_prop_ro("num_kv_heads", [](const PyKvCache& c) { return c.spec().num_kv_heads; })
      .def_prop_ro("head_dim", [](const PyKvCache& c) { return c.spec().head_dim; })
      .def_prop_ro("block_size", [](const PyKvCache& c) { return c.spec().block_size; })
      .def_prop_ro("sub_block_size", [](const PyKvCache& c) { return c.spec().layout().sub_block_size; },
                   "Tokens per head-major run of a block: block_size, or 16 for FP8 blocks of more than 16 tokens.")
      .def_prop_ro("num_blocks", [](const PyKvCache& c) { return c.spec().num_blocks; })
      .def_prop_ro("kv_cache_dtype", [](const PyKvCache& c) { return std::string(kv_cache_dtype_name(c.spec().dtype)); })
      .def_prop_ro("kv_scales", [](const PyKvCache& c) { return std::string(scale_granularity_name(c.spec().granularity)); })
      .def_prop_ro("device", [](const PyKvCache& c) {
        return c.device() == Device::kCuda ? "cuda:" + std::to_string(c.device_index()) : std::string("cpu");
      })
      .def_prop_ro("allocated_bytes", &PyKvCache::allocated_bytes)
      .def_prop_ro("num_free_blocks", [](const PyKvCache& c) { return c.allocator().num_free_blocks(); })
      .def(
          "create_sequence", [](PyKvCache& c) { return c.allocator().create_sequence(); },
          "A new, empty sequence; returns its id.")
      .def(
          "append_tokens",
          [](PyKvCache& c, SequenceId seq, int64_t num_tokens) {
            AppendResult r = c.allocator().append_tokens(seq, num_tokens);
            // Copy-on-write of a shared partial block must land before the new tokens are written.
            c.apply_copies(r.copies);
            const size_t n = r.slots.size();
            return to_numpy(std::move(r.slots), {n});
          },
          nb::arg("seq"), nb::arg("num_tokens"),
          "Grows `seq` by `num_tokens` and returns their slots (int64 NumPy array, the slot_mapping of "
          "write_kv). All or nothing: raises CacheFullError and changes nothing when blocks run out.")
      .def(
          "fork", [](PyKvCache& c, SequenceId seq) { return c.allocator().fork(seq); }, nb::arg("seq"),
          "A new sequence sharing all of `seq`'s blocks (copy-on-write on the next append).")
      .def(
          "free_sequence", [](PyKvCache& c, SequenceId seq) { c.allocator().free_sequence(seq); }, nb::arg("seq"))
      .def(
          "length", [](const PyKvCache& c, SequenceId seq) { return c.allocator().length(seq); }, nb::arg("seq"))
      .def(
          "__contains__", [](const PyKvCache& c, SequenceId seq) { return c.allocator().contains(seq); },
          nb::arg("seq"))
      .def(
          "blocks_needed",
          [](const PyKvCache& c, SequenceId seq, int64_t n) { return c.allocator().blocks_needed(seq, n); },
          nb::arg("seq"), nb::arg("num_tokens"))
      .def(
          "can_append", [](const PyKvCache& c, SequenceId seq, int64_t n) { return c.allocator().can_append(seq, n); },
          nb::arg("seq"), nb::arg("num_tokens"))
      .def(
          "ref_count",
          [](const PyKvCache& c, int32_t block) {
            FP8KV_REQUIRE(block >= 0 && block < c.allocator().num_blocks(), "block", "must be in [0, ",
                          c.allocator().num_blocks(), "), got ", block);
            return c.allocator().ref_count(block);
          },
          nb::arg("block"))
      .def(
          "slot_of", [](const PyKvCache& c, SequenceId seq, int64_t index) { return c.allocator().slot_of(seq, index); },
          nb::arg("seq"), nb::arg("index"))
      .def(
          "block_table",
          [](const PyKvCache& c, SequenceId seq) {
            std::vector<int32_t> table = c.allocator().block_table(seq);
            const size_t n = table.size();
            return to_numpy(std::move(table), {n});
          },
          nb::arg("seq"), "The blocks of `seq`, in token order (int32 NumPy array).")
      .def(
          "block_tables",
          [](const PyKvCache& c, const std::vector<SequenceId>& seqs, std::optional<int64_t> max_blocks) {
            size_t width = 0;
            for (SequenceId s : seqs) width = std::max(width, c.allocator().block_table(s).size());
            if (max_blocks) {
              FP8KV_REQUIRE(*max_blocks >= static_cast<int64_t>(width), "max_blocks", "must be >= ", width,
                            " (the longest block table), got ", *max_blocks);
              width = static_cast<size_t>(*max_blocks);
            }
            width = std::max<size_t>(width, 1);
            // Padding is block 0: a valid id that no kernel reads, since seq_lens stops before it.
            std::vector<int32_t> tables(seqs.size() * width, 0);
            for (size_t i = 0; i < seqs.size(); ++i) {
              const std::vector<int32_t>& t = c.allocator().block_table(seqs[i]);
              std::copy(t.begin(), t.end(), tables.begin() + static_cast<std::ptrdiff_t>(i * width));
            }
            return to_numpy(std::move(tables), {seqs.size(), width});
          },
          nb::arg("seqs"), nb::arg("max_blocks") = nb::none(),
          "Block tables of `seqs` as one int32 NumPy array [batch, max_blocks], padded with block 0.")
      .def(
          "seq_lens",
          [](const PyKvCache& c, const std::vector<SequenceId>& seqs) {
            std::vector<int32_t> lens;
            lens.reserve(seqs.size());
            for (SequenceId s : seqs) lens.push_back(static_cast<int32_t>(c.allocator().length(s)));
            return to_numpy(std::move(lens), {seqs.size()});
          },
          nb::arg("seqs"), "Lengths of `seqs` as an int32 NumPy array [batch].")
      .def(
          "set_scales",
          [](PyKvCache& c, int layer, const std::vector<float>& k_scales, const std::vector<float>& v_scales) {
            FP8KV_REQUIRE(k_scales.size() == v_scales.size(), "v_scales", "must have as many entries as k_scales (",
                          k_scales.size(), "), got ", v_scales.size());
            c.set_static_scales(layer, k_scales.data(), v_scales.data(), static_cast<int64_t>(k_scales.size()));
          },
          nb::arg("layer"), nb::arg("k_scales"), nb::arg("v_scales"),
          "Sets a layer's static K and V scales (per_tensor: 1 value each, per_head: num_kv_heads). "
          "Convention: stored = fp8(x / scale), x ~= stored * scale.")
      .def("k_pool", [](PyKvCache& c, int layer) { return pool_view(c, layer, true); }, nb::arg("layer"),
           "Layer's K pool as storage-width unsigned ints: [num_blocks, num_kv_heads, block_size, head_dim], or "
           "[num_blocks, block_size // sub_block_size, num_kv_heads, sub_block_size, head_dim] when "
           "sub_block_size < block_size.")
      .def("v_pool", [](PyKvCache& c, int layer) { return pool_view(c, layer, false); }, nb::arg("layer"),
           "Layer's V pool, shaped like k_pool.")
      .def("k_token_scales", [](PyKvCache& c, int layer) { return token_scale_view(c, layer, true); },
           nb::arg("layer"), "per_token caches: K scales float32 in the pool's order ([num_blocks, num_kv_heads, block_size], "
           "or [num_blocks, block_size // sub_block_size, num_kv_heads, sub_block_size]); else None.")
      .def("v_token_scales", [](PyKvCache& c, int layer) { return token_scale_view(c, layer, false); },
           nb::arg("layer"), "per_token caches: V scales, shaped like k_token_scales; else None.");
}

}  // namespace fp8kv::python
