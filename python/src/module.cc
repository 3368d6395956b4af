// The fp8kv._ext extension module: the library's C++ API, one-to-one, for the Python package.
//
// This layer converts arguments (DLPack arrays -> TensorRef, names -> enums) and translates
// exceptions; every rule about shapes, dtypes and values is checked by the library's own
// validate() functions, so Python users get the same messages as C++ users. Framework-specific
// work (allocating outputs in the caller's framework, reading PyTorch's current stream, viewing
// torch.float8 tensors as bytes) lives in python/fp8kv/__init__.py.
#include <nanobind/nanobind.h>

#include <Python.h>

#include <exception>
#include <string>

#include "bindings.h"
#include "fp8kv/error.h"

namespace nb = nanobind;

namespace fp8kv::python {
namespace {

// Python exception types, created once at import. InvalidArgument derives from ValueError and
// Unsupported from NotImplementedError so that generic handlers catch them too.
PyObject* g_error = nullptr;
PyObject* g_invalid_argument = nullptr;
PyObject* g_cache_full = nullptr;
PyObject* g_unsupported = nullptr;
PyObject* g_file_error = nullptr;

PyObject* new_exception(nb::module_& m, const char* name, PyObject* bases, const char* doc) {
  const std::string qualified = std::string("fp8kv.") + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases, nullptr);
  if (type == nullptr) throw nb::python_error();
  m.attr(name) = nb::handle(type);
  return type;
}

void register_exceptions(nb::module_& m) {
  g_error = new_exception(m, "Error", PyExc_RuntimeError, "Base class of every error fp8kv raises.");
  nb::object invalid_bases = nb::make_tuple(nb::handle(g_error), nb::handle(PyExc_ValueError));
  g_invalid_argument = new_exception(m, "InvalidArgument", invalid_bases.ptr(),
                                     "An argument broke a documented rule (shape, dtype, device, range); "
                                     "the message names the argument.");
  g_cache_full = new_exception(m, "CacheFullError", g_error,
                               "The paged cache has no free block; nothing was changed. Free or preempt "
                               "sequences and try again.");
  nb::object unsupported_bases = nb::make_tuple(nb::handle(g_error), nb::handle(PyExc_NotImplementedError));
  g_unsupported = new_exception(m, "Unsupported", unsupported_bases.ptr(),
                                "Not supported by this build or device (e.g. CUDA arrays without a CUDA build).");
  nb::object file_bases = nb::make_tuple(nb::handle(g_error), nb::handle(PyExc_OSError));
  g_file_error = new_exception(m, "FileError", file_bases.ptr(),
                               "A file (config.json, checkpoint) is missing, truncated or inconsistent.");

  // One translator, most derived type first, so a subclass never lands in its base's handler.
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(g_invalid_argument, e.what());
    } catch (const CacheFullError& e) {
      PyErr_SetString(g_cache_full, e.what());
    } catch (const Unsupported& e) {
      PyErr_SetString(g_unsupported, e.what());
    } catch (const FileError& e) {
      PyErr_SetString(g_file_error, e.what());
    } catch (const Error& e) {
      PyErr_SetString(g_error, e.what());
    }
  });
}

}  // namespace
}  // namespace fp8kv::python

NB_MODULE(_ext, m) {
  m.doc() = "fp8kv native extension: FP8 paged KV cache and attention (use the fp8kv package, not this module)";
  fp8kv::python::register_exceptions(m);
  fp8kv::python::bind_planner(m);
  fp8kv::python::bind_cache(m);
  fp8kv::python::bind_ops(m);
  fp8kv::python::bind_decode_plan(m);
}
