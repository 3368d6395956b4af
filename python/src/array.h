// DLPack arrays (nanobind's nb::ndarray) as fp8kv TensorRefs, without copying.
//
// Every array that crosses into the library goes through to_tensor(), which is the one place that
// decides what the binding accepts: a CPU or CUDA array, dense and row-major, of a dtype fp8kv
// knows. Anything else is an InvalidArgument naming the Python argument; nothing is converted or
// copied behind the caller's back (a copy would silently detach `out=` from the caller's tensor).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "fp8kv/dtype.h"
#include "fp8kv/tensor.h"

namespace fp8kv::python {

namespace nb = nanobind;

// Any DLPack-capable array: NumPy, PyTorch, CuPy, JAX, ... No dtype/device/order constraint, so
// that nanobind never converts; to_tensor() checks instead and explains what is wrong.
using Array = nb::ndarray<>;

// The TensorRef view of `array`. `fp8` reinterprets a uint8 array as that FP8 format (for
// frameworks whose DLPack export has no float8 codes: torch.float8_e4m3fn.view(torch.uint8)).
TensorRef to_tensor(const Array& array, const char* argument, std::optional<DType> fp8 = std::nullopt);

// to_tensor() for an optional argument; an undefined TensorRef when absent.
TensorRef to_optional_tensor(const std::optional<Array>& array, const char* argument,
                             std::optional<DType> fp8 = std::nullopt);

// "fp8_e4m3" / "fp8" / "fp8_e5m2" -> the FP8 DType (argument `fp8_dtype`); nullopt for None.
std::optional<DType> parse_fp8_dtype(const std::optional<std::string>& name);

// Python-facing dtype names ("float32", "bfloat16", ...) -> DType, and back.
DType parse_dtype(const std::string& name, const char* argument);

}  // namespace fp8kv::python
