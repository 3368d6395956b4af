// Registration functions of the fp8kv._ext module, one per source file.
#pragma once

#include <nanobind/nanobind.h>

namespace fp8kv::python {

void bind_planner(nanobind::module_& m);  // planner.cc: ModelShape, KvPlan, plan_kv_cache, dtype names
void bind_cache(nanobind::module_& m);    // cache.cc: KvCache (paged cache + block allocator)
void bind_ops(nanobind::module_& m);      // ops.cc: cache write, decode, prefill, RoPE, calibration
void bind_decode_plan(nanobind::module_& m);  // decode_plan.cc: DecodePlan, check_errors, cuda_available

}  // namespace fp8kv::python
