// DecodePlan: paged decode split into plan (host, once per batch shape) and run (graph-capturable).
//
// On CUDA the plan is the library's cuda::DecodePlan: the split-KV work partition and its device
// workspace, computed from host sequence lengths, so that run() neither allocates nor synchronises
// and can be captured in a CUDA graph and replayed over several decode steps (headroom_tokens).
// On the CPU there is nothing to plan: run() is the reference, so one decoding loop serves both.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "array.h"
#include "bindings.h"
#include "cache.h"
#include "fp8kv/attention.h"
#include "fp8kv/error.h"
#include "fp8kv/reference.h"

#if defined(FP8KV_WITH_CUDA)
#include "fp8kv/cuda.h"
#endif

namespace nb = nanobind;

namespace fp8kv::python {
namespace {

DecodeArgs decode_args(PyKvCache& cache, int layer, const Array& q, const Array& block_tables, const Array& seq_lens,
                       const Array& out, float softmax_scale) {
  DecodeArgs args;
  args.q = to_tensor(q, "q");
  args.cache = cache.layer(layer);
  args.block_tables = to_tensor(block_tables, "block_tables");
  args.seq_lens = to_tensor(seq_lens, "seq_lens");
  args.out = to_tensor(out, "out");
  args.softmax_scale = softmax_scale;
  if (args.q.device == Device::kCuda) {
    const int current = current_cuda_device();
    FP8KV_REQUIRE(args.q.device_index == current, "q", "is on cuda:", args.q.device_index,
                  " but the current CUDA device is cuda:", current);
  }
  return args;
}

class PyDecodePlan {
 public:
  PyDecodePlan(PyKvCache& cache, int layer, const Array& q, const Array& block_tables, const Array& seq_lens,
               const Array& out, const std::vector<int32_t>& host_seq_lens, int32_t headroom_tokens,
               int32_t max_splits) {
    const DecodeArgs args = decode_args(cache, layer, q, block_tables, seq_lens, out, 1.0f);
    device_ = args.q.device;
    batch_ = args.q.size(0);
    FP8KV_REQUIRE(static_cast<int64_t>(host_seq_lens.size()) == batch_, "host_seq_lens", "must have batch = ",
                  batch_, " entries, got ", host_seq_lens.size());
    if (device_ == Device::kCpu) {
      validate(args);
      return;
    }
#if defined(FP8KV_WITH_CUDA)
    cuda::DecodePlanOptions options;
    options.headroom_tokens = headroom_tokens;
    options.max_splits = max_splits;
    plan_ = std::make_unique<cuda::DecodePlan>(args, host_seq_lens, options);
#else
    (void)headroom_tokens, (void)max_splits;
    throw Unsupported("a decode plan for CUDA arrays needs an fp8kv build with CUDA");
#endif
  }

  void run(PyKvCache& cache, int layer, const Array& q, const Array& block_tables, const Array& seq_lens,
           const Array& out, float softmax_scale, uintptr_t stream) const {
    const DecodeArgs args = decode_args(cache, layer, q, block_tables, seq_lens, out, softmax_scale);
    FP8KV_REQUIRE(args.q.device == device_, "q", "is on a different device than the plan was made for");
    nb::gil_scoped_release release;
    if (device_ == Device::kCpu) {
      reference::paged_decode(args);
      return;
    }
#if defined(FP8KV_WITH_CUDA)
    plan_->run(args, reinterpret_cast<void*>(stream));
#else
    (void)stream;
#endif
  }

  int64_t batch() const { return batch_; }
  // Split-KV details exist only for a CUDA plan; None on the CPU.
  std::optional<int64_t> chunk_tokens() const { return cuda_value([](const auto& p) { return int64_t{p.chunk_tokens()}; }); }
  std::optional<int64_t> num_work_items() const { return cuda_value([](const auto& p) { return p.num_work_items(); }); }
  std::optional<int64_t> workspace_bytes() const {
    return cuda_value([](const auto& p) { return static_cast<int64_t>(p.workspace_bytes()); });
  }
  std::optional<int64_t> num_splits(int64_t sequence) const {
    FP8KV_REQUIRE(sequence >= 0 && sequence < batch_, "sequence", "must be in [0, ", batch_, "), got ", sequence);
    return cuda_value([sequence](const auto& p) { return int64_t{p.num_splits(sequence)}; });
  }

 private:
  template <typename F>
  std::optional<int64_t> cuda_value(F&& f) const {
#if defined(FP8KV_WITH_CUDA)
    if (plan_) return f(*plan_);
#else
    (void)f;
#endif
    return std::nullopt;
  }

  Device device_ = Device::kCpu;
  int64_t batch_ = 0;
#if defined(FP8KV_WITH_CUDA)
  std::unique_ptr<cuda::DecodePlan> plan_;
#endif
};

}  // namespace

void bind_decode_plan(nb::module_& m) {
  nb::class_<PyDecodePlan>(m, "DecodePlan")
      .def(nb::init<PyKvCache&, int, const Array&, const Array&, const Array&, const Array&, const std::vector<int32_t>&,
                    int32_t, int32_t>(),
           nb::arg("cache"), nb::arg("layer"), nb::arg("q"), nb::arg("block_tables"), nb::arg("seq_lens"),
           nb::arg("out"), nb::arg("host_seq_lens"), nb::arg("headroom_tokens") = 0, nb::arg("max_splits") = 0)
      .def("run", &PyDecodePlan::run, nb::arg("cache"), nb::arg("layer"), nb::arg("q"), nb::arg("block_tables"),
           nb::arg("seq_lens"), nb::arg("out"), nb::arg("softmax_scale"), nb::arg("stream") = 0)
      .def_prop_ro("batch", &PyDecodePlan::batch)
      .def_prop_ro("chunk_tokens", &PyDecodePlan::chunk_tokens)
      .def_prop_ro("num_work_items", &PyDecodePlan::num_work_items)
      .def_prop_ro("workspace_bytes", &PyDecodePlan::workspace_bytes)
      .def("num_splits", &PyDecodePlan::num_splits, nb::arg("sequence"));

  m.def("check_errors", [] {
#if defined(FP8KV_WITH_CUDA)
    cuda::check_errors();
#endif
  });
  m.def("cuda_available", [] {
#if defined(FP8KV_WITH_CUDA)
    return cuda::available();
#else
    return false;
#endif
  });
}

}  // namespace fp8kv::python
