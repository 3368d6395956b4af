// A naive dense attention written independently of src/reference (two passes over explicit score
// vectors), and typed buffers for building reference inputs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "fp8kv/dtype.h"
#include "fp8kv/fp8.h"

namespace fp8kv::testing {

// q [nq, hq, d], k/v [nk, hkv, d] in float64; query i sees keys j <= i + (nk - nq) when causal.
inline std::vector<double> naive_attention(const std::vector<double>& q, const std::vector<double>& k,
                                           const std::vector<double>& v, int64_t nq, int64_t nk, int hq, int hkv,
                                           int d, double softmax_scale, bool causal) {
  std::vector<double> out(static_cast<size_t>(nq * hq * d), 0.0);
  const int group = hq / hkv;
  for (int64_t i = 0; i < nq; ++i) {
    for (int h = 0; h < hq; ++h) {
      const int64_t limit = causal ? std::min(nk, i + nk - nq + 1) : nk;
      if (limit <= 0) continue;
      std::vector<double> s(static_cast<size_t>(limit));
      for (int64_t j = 0; j < limit; ++j) {
        double dot = 0;
        for (int c = 0; c < d; ++c) {
          dot += q[static_cast<size_t>((i * hq + h) * d + c)] * k[static_cast<size_t>((j * hkv + h / group) * d + c)];
        }
        s[static_cast<size_t>(j)] = dot * softmax_scale;
      }
      const double m = *std::max_element(s.begin(), s.end());
      double total = 0;
      for (double& x : s) total += (x = std::exp(x - m));
      for (int c = 0; c < d; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < limit; ++j) {
          acc += s[static_cast<size_t>(j)] * v[static_cast<size_t>((j * hkv + h / group) * d + c)];
        }
        out[static_cast<size_t>((i * hq + h) * d + c)] = acc / total;
      }
    }
  }
  return out;
}

// Absolute slack for comparing two float64 attention computations that sum in different orders.
// An output is a convex combination of value rows, so each float64 sum (scores over head_dim,
// weights over up to ~10^5 keys) carries rounding of order (terms * 2^-53) relative to its terms,
// i.e. well under 2^-36 * max|value| here. That dominates an output that cancels to near zero
// (seen: -1.18e-9 differing by 2 float ulps between the two orders), while staying far below one
// float ulp of any output larger than 2^-12 * max|value|.
inline double float64_order_slack(const std::vector<double>& values) {
  double largest = 0.0;
  for (double x : values) largest = std::max(largest, std::fabs(x));
  return std::ldexp(largest, -36);
}

// Every element within `ulps` units in the last place of a format with `mantissa_bits` of the
// float64 expectation (plus `abs_floor` for values near zero). NaN fails.
template <typename Got>
::testing::AssertionResult all_within_ulps(const Got& got, const std::vector<double>& want, int mantissa_bits,
                                           double ulps, double abs_floor) {
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    const double tol = ulps * std::ldexp(std::fabs(want[i]), -mantissa_bits) + abs_floor;
    if (!(std::fabs(g - want[i]) <= tol)) {
      return ::testing::AssertionFailure() << "element " << i << ": got " << g << ", want " << want[i]
                                           << " (tolerance " << tol << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

// A host buffer of `dtype` elements converted from floats with the public conversions.
struct TypedBuffer {
  DType dtype = DType::kFloat32;
  std::vector<uint8_t> bytes;

  TypedBuffer(const std::vector<float>& values, DType dtype_) : dtype(dtype_), bytes(values.size() * dtype_size(dtype_)) {
    for (size_t i = 0; i < values.size(); ++i) set(i, values[i]);
  }
  void* data() { return bytes.data(); }
  size_t size() const { return bytes.size() / dtype_size(dtype); }
  void set(size_t i, float x) {
    switch (dtype) {
      case DType::kFloat32: reinterpret_cast<float*>(bytes.data())[i] = x; break;
      case DType::kBFloat16: reinterpret_cast<Bf16*>(bytes.data())[i] = Bf16::from_float(x); break;
      case DType::kFloat16: reinterpret_cast<Fp16*>(bytes.data())[i] = Fp16::from_float(x); break;
      case DType::kFp8E4M3: reinterpret_cast<Fp8E4M3*>(bytes.data())[i] = Fp8E4M3::from_float(x); break;
      case DType::kFp8E5M2: reinterpret_cast<Fp8E5M2*>(bytes.data())[i] = Fp8E5M2::from_float(x); break;
      default: break;
    }
  }
  double get(size_t i) const {
    switch (dtype) {
      case DType::kFloat32: return reinterpret_cast<const float*>(bytes.data())[i];
      case DType::kBFloat16: return reinterpret_cast<const Bf16*>(bytes.data())[i].to_float();
      case DType::kFloat16: return reinterpret_cast<const Fp16*>(bytes.data())[i].to_float();
      case DType::kFp8E4M3: return reinterpret_cast<const Fp8E4M3*>(bytes.data())[i].to_float();
      case DType::kFp8E5M2: return reinterpret_cast<const Fp8E5M2*>(bytes.data())[i].to_float();
      default: return 0;
    }
  }
  std::vector<double> values() const {
    std::vector<double> out(size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = get(i);
    return out;
  }
  void poison() { std::fill(bytes.begin(), bytes.end(), uint8_t{0xFF}); }  // NaN in every float format
};

// Mantissa bits of a storage/output dtype, for ulp-based tolerances.
inline int mantissa_bits(DType t) {
  switch (t) {
    case DType::kFloat32: return 23;
    case DType::kBFloat16: return 7;
    case DType::kFloat16: return 10;
    case DType::kFp8E4M3: return 3;
    case DType::kFp8E5M2: return 2;
    default: return 0;
  }
}

}  // namespace fp8kv::testing
