// Shared by the prefill GPU tests: random varlen problems in FP8 (with descales) or BF16, the CPU
// reference on a slice of query rows, and the same-precision naive implementation whose error
// bounds the kernel's.
//
// The error bound, after FlashAttention-3's tests: the kernel's error against the float64
// reference (computed on the same quantised inputs) may be at most kErrorFactor times the error of
// a naive implementation that rounds the same things the kernel must round (P to FP8 E4M3 or
// BF16 before the P.V product, the output to BF16), plus a small floor for the float32 softmax
// statistics. Errors are relative L2 norms over every checked element; NaN fails every bound.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "cuda/gpu_test_utils.h"
#include "fp8kv/cuda_prefill.h"
#include "fp8kv/fp8.h"
#include "fp8kv/half.h"
#include "fp8kv/reference.h"
#include "fp8kv/scales.h"
#include "common/test_utils.h"

namespace fp8kv::testing {

constexpr double kErrorFactor = 2.0;
constexpr double kErrorFloor = 1e-3;

enum class DescaleMode { kNone, kPerTensor, kPerHead };

// Runs fn(i) for i in [0, count) on all cores (the device machine has 16).
template <typename Fn>
void parallel_items(int64_t count, Fn fn) {
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  std::atomic<int64_t> next{0};
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int64_t i = next++; i < count; i = next++) fn(i);
    });
  }
  for (auto& th : pool) th.join();
}

// Quantises x [rows, heads, d] to FP8 E4M3 with per-tensor or per-group-of-heads scales
// (scales.h convention). `groups` = 1 (per tensor) or the number of KV heads.
inline std::vector<Fp8E4M3> quantize_e4m3(const std::vector<float>& x, int heads, int d, int groups,
                                          std::vector<float>& scale) {
  std::vector<float> amax(static_cast<size_t>(groups), 0.0f);
  const int per_group = heads / groups;
  for (size_t i = 0; i < x.size(); ++i) {
    const int g = static_cast<int>((i / static_cast<size_t>(d)) % static_cast<size_t>(heads)) / per_group;
    amax[static_cast<size_t>(g)] = std::max(amax[static_cast<size_t>(g)], std::fabs(x[i]));
  }
  scale.resize(static_cast<size_t>(groups));
  for (int g = 0; g < groups; ++g) scale[static_cast<size_t>(g)] = scale_from_amax(amax[static_cast<size_t>(g)], kE4M3Max);
  std::vector<Fp8E4M3> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const int g = static_cast<int>((i / static_cast<size_t>(d)) % static_cast<size_t>(heads)) / per_group;
    out[i] = Fp8E4M3::from_float(x[i] / scale[static_cast<size_t>(g)]);
  }
  return out;
}

// A dense varlen problem held on the host in its storage dtype, plus its device copy.
struct DenseProblem {
  std::vector<int32_t> cu_q, cu_k;
  int hq = 0, hk = 0, d = 0;
  bool causal = true;
  DType dtype = DType::kFp8E4M3;
  std::vector<uint8_t> q, k, v;             // raw storage bytes
  std::vector<float> q_ds, k_ds, v_ds;      // empty = 1.0
  float softmax_scale = 0.0f;

  int64_t total_q() const { return cu_q.back(); }
  int64_t total_k() const { return cu_k.back(); }
  int batch() const { return static_cast<int>(cu_q.size()) - 1; }
  size_t elem() const { return dtype_size(dtype); }

  // Dequantised element (row, head, channel) of q / k / v.
  double value(const std::vector<uint8_t>& t, const std::vector<float>& ds, int heads, int64_t row, int head,
               int c) const {
    const size_t i = static_cast<size_t>((row * heads + head) * d + c);
    double x;
    if (dtype == DType::kBFloat16) {
      Bf16 b;
      std::memcpy(&b, t.data() + 2 * i, 2);
      x = b.to_float();
    } else {
      x = Fp8E4M3{t[i]}.to_float();
    }
    if (!ds.empty()) x *= ds[ds.size() == 1 ? 0 : static_cast<size_t>(head / (heads / hk))];
    return x;
  }
};

inline std::vector<int32_t> cumulative(const std::vector<int>& lens) {
  std::vector<int32_t> cu{0};
  for (int l : lens) cu.push_back(cu.back() + l);
  return cu;
}

// Random inputs: N(0,1) queries and values, keys with two outlier channels (x10), as real keys.
inline DenseProblem make_dense_problem(const std::vector<int>& lens_q, const std::vector<int>& lens_k, int hq,
                                       int hk, int d, bool causal, DType dtype, DescaleMode mode, uint64_t seed) {
  DenseProblem p;
  p.cu_q = cumulative(lens_q);
  p.cu_k = cumulative(lens_k);
  p.hq = hq;
  p.hk = hk;
  p.d = d;
  p.causal = causal;
  p.dtype = dtype;
  p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(d));
  const std::vector<float> qf = random_normal(static_cast<size_t>(p.total_q() * hq * d), seed);
  const std::vector<float> kf = random_normal(static_cast<size_t>(p.total_k() * hk * d), seed + 1, 1.0f, d, 2, 10.0f);
  const std::vector<float> vf = random_normal(static_cast<size_t>(p.total_k() * hk * d), seed + 2);
  auto store = [&](const std::vector<float>& x, int heads, std::vector<uint8_t>& raw, std::vector<float>& ds) {
    if (dtype == DType::kBFloat16) {
      raw.resize(x.size() * 2);
      for (size_t i = 0; i < x.size(); ++i) {
        const Bf16 b = Bf16::from_float(x[i]);
        std::memcpy(raw.data() + 2 * i, &b, 2);
      }
      return;
    }
    std::vector<float> scale;
    const int groups = mode == DescaleMode::kPerHead ? hk : 1;
    std::vector<Fp8E4M3> codes;
    if (mode == DescaleMode::kNone) {
      codes.resize(x.size());
      for (size_t i = 0; i < x.size(); ++i) codes[i] = Fp8E4M3::from_float(x[i]);
    } else {
      codes = quantize_e4m3(x, heads, d, groups, scale);
    }
    raw.resize(x.size());
    for (size_t i = 0; i < x.size(); ++i) raw[i] = codes[i].bits;
    ds = scale;
  };
  store(qf, hq, p.q, p.q_ds);
  store(kf, hk, p.k, p.k_ds);
  store(vf, hk, p.v, p.v_ds);
  return p;
}

// Which rows are checked: the last `rows` query rows of every sequence (all when rows <= 0). With
// bottom-right causal alignment such a slice is itself a valid problem, so the float64 reference
// stays affordable at 16k tokens.
struct RowSlice {
  std::vector<int32_t> cu;       // cumulative slice lengths
  std::vector<int64_t> source;   // packed row index in the full problem of each slice row
};
inline RowSlice last_rows(const DenseProblem& p, int rows) {
  RowSlice s;
  s.cu.push_back(0);
  for (int b = 0; b < p.batch(); ++b) {
    const int len = p.cu_q[static_cast<size_t>(b) + 1] - p.cu_q[static_cast<size_t>(b)];
    const int take = rows <= 0 ? len : std::min(len, rows);
    for (int i = len - take; i < len; ++i) s.source.push_back(p.cu_q[static_cast<size_t>(b)] + i);
    s.cu.push_back(s.cu.back() + take);
  }
  return s;
}

// reference::prefill on the slice (float32 output, not rounded to bf16).
inline std::vector<float> reference_on_slice(const DenseProblem& p, const RowSlice& s) {
  const size_t row_bytes = static_cast<size_t>(p.hq * p.d) * p.elem();
  std::vector<uint8_t> q_slice(s.source.size() * row_bytes);
  for (size_t r = 0; r < s.source.size(); ++r) {
    std::memcpy(q_slice.data() + r * row_bytes, p.q.data() + static_cast<size_t>(s.source[r]) * row_bytes, row_bytes);
  }
  std::vector<float> out(s.source.size() * static_cast<size_t>(p.hq * p.d));
  std::vector<int32_t> cu_q = s.cu, cu_k = p.cu_k;
  std::vector<uint8_t> k = p.k, v = p.v;
  std::vector<float> q_ds = p.q_ds, k_ds = p.k_ds, v_ds = p.v_ds;
  PrefillArgs a;
  const int64_t rows = static_cast<int64_t>(s.source.size());
  a.q = TensorRef(q_slice.data(), p.dtype, {rows, p.hq, p.d});
  a.k = TensorRef(k.data(), p.dtype, {p.total_k(), p.hk, p.d});
  a.v = TensorRef(v.data(), p.dtype, {p.total_k(), p.hk, p.d});
  a.cu_seqlens_q = TensorRef(cu_q.data(), DType::kInt32, {static_cast<int64_t>(cu_q.size())});
  a.cu_seqlens_k = TensorRef(cu_k.data(), DType::kInt32, {static_cast<int64_t>(cu_k.size())});
  a.out = TensorRef(out.data(), DType::kFloat32, {rows, p.hq, p.d});
  a.softmax_scale = p.softmax_scale;
  a.causal = p.causal;
  if (!q_ds.empty()) a.q_descale = TensorRef(q_ds.data(), DType::kFloat32, {static_cast<int64_t>(q_ds.size())});
  if (!k_ds.empty()) a.k_descale = TensorRef(k_ds.data(), DType::kFloat32, {static_cast<int64_t>(k_ds.size())});
  if (!v_ds.empty()) a.v_descale = TensorRef(v_ds.data(), DType::kFloat32, {static_cast<int64_t>(v_ds.size())});
  reference::prefill(a);
  return out;
}

// The naive same-precision implementation on the slice: float64 scores and softmax, P rounded to
// the kernel's P.V operand type (E4M3 for FP8, BF16 otherwise) before the product, the row sum
// from unrounded P (as the kernel keeps it in FP32), the output rounded to BF16.
inline std::vector<float> naive_on_slice(const DenseProblem& p, const RowSlice& s) {
  std::vector<float> out(s.source.size() * static_cast<size_t>(p.hq * p.d));
  const int group = p.hq / p.hk;
  parallel_items(static_cast<int64_t>(s.source.size()) * p.hq, [&](int64_t item) {
    const size_t r = static_cast<size_t>(item / p.hq);
    const int h = static_cast<int>(item % p.hq);
    const int64_t row = s.source[r];
    const int b = static_cast<int>(std::upper_bound(p.cu_q.begin(), p.cu_q.end(), row) - p.cu_q.begin()) - 1;
    const int64_t len_q = p.cu_q[static_cast<size_t>(b) + 1] - p.cu_q[static_cast<size_t>(b)];
    const int64_t len_k = p.cu_k[static_cast<size_t>(b) + 1] - p.cu_k[static_cast<size_t>(b)];
    const int64_t i = row - p.cu_q[static_cast<size_t>(b)];
    const int64_t visible = p.causal ? std::min(len_k, i + (len_k - len_q) + 1) : len_k;
    std::vector<double> q(static_cast<size_t>(p.d)), o(static_cast<size_t>(p.d), 0.0), sc;
    for (int c = 0; c < p.d; ++c) q[static_cast<size_t>(c)] = p.value(p.q, p.q_ds, p.hq, row, h, c);
    float* dst = out.data() + (r * static_cast<size_t>(p.hq) + static_cast<size_t>(h)) * static_cast<size_t>(p.d);
    if (visible <= 0) {
      std::fill(dst, dst + p.d, 0.0f);
      return;
    }
    sc.resize(static_cast<size_t>(visible));
    double m = -INFINITY;
    const int kvh = h / group;
    for (int64_t j = 0; j < visible; ++j) {
      double dot = 0.0;
      for (int c = 0; c < p.d; ++c) dot += q[static_cast<size_t>(c)] * p.value(p.k, p.k_ds, p.hk, p.cu_k[static_cast<size_t>(b)] + j, kvh, c);
      sc[static_cast<size_t>(j)] = dot * p.softmax_scale;
      m = std::max(m, sc[static_cast<size_t>(j)]);
    }
    double l = 0.0;
    for (int64_t j = 0; j < visible; ++j) {
      const double pr = std::exp(sc[static_cast<size_t>(j)] - m);
      l += pr;
      const double pq = p.dtype == DType::kBFloat16 ? Bf16::from_float(static_cast<float>(pr)).to_float()
                                                    : Fp8E4M3::from_float(static_cast<float>(pr)).to_float();
      for (int c = 0; c < p.d; ++c) o[static_cast<size_t>(c)] += pq * p.value(p.v, p.v_ds, p.hk, p.cu_k[static_cast<size_t>(b)] + j, kvh, c);
    }
    for (int c = 0; c < p.d; ++c) dst[c] = Bf16::from_float(static_cast<float>(o[static_cast<size_t>(c)] / l)).to_float();
  });
  return out;
}

// A DenseProblem's device copy and the PrefillArgs that describe it.
struct DenseOnDevice {
  DeviceBuffer<uint8_t> q, k, v;
  DeviceBuffer<int32_t> cu_q, cu_k;
  DeviceBuffer<Bf16> out;
  DeviceBuffer<float> q_ds, k_ds, v_ds;
  PrefillArgs args;

  explicit DenseOnDevice(const DenseProblem& p)
      : q(p.q.size()),
        k(std::max<size_t>(p.k.size(), 1)),
        v(std::max<size_t>(p.v.size(), 1)),
        cu_q(p.cu_q),
        cu_k(p.cu_k),
        out(static_cast<size_t>(p.total_q() * p.hq * p.d)),
        q_ds(std::max<size_t>(p.q_ds.size(), 1)),
        k_ds(std::max<size_t>(p.k_ds.size(), 1)),
        v_ds(std::max<size_t>(p.v_ds.size(), 1)) {
    q.upload(p.q);
    if (!p.k.empty()) {
      k.upload(p.k);
      v.upload(p.v);
    }
    args.q = q.tensor(p.dtype, {p.total_q(), p.hq, p.d});
    args.k = k.tensor(p.dtype, {p.total_k(), p.hk, p.d});
    args.v = v.tensor(p.dtype, {p.total_k(), p.hk, p.d});
    args.cu_seqlens_q = cu_q.tensor(DType::kInt32, {static_cast<int64_t>(p.cu_q.size())});
    args.cu_seqlens_k = cu_k.tensor(DType::kInt32, {static_cast<int64_t>(p.cu_k.size())});
    args.out = out.tensor(DType::kBFloat16, {p.total_q(), p.hq, p.d});
    args.softmax_scale = p.softmax_scale;
    args.causal = p.causal;
    auto descale = [](DeviceBuffer<float>& buf, const std::vector<float>& host) {
      if (host.empty()) return TensorRef();
      buf.upload(host);
      return buf.tensor(DType::kFloat32, {static_cast<int64_t>(host.size())});
    };
    args.q_descale = descale(q_ds, p.q_ds);
    args.k_descale = descale(k_ds, p.k_ds);
    args.v_descale = descale(v_ds, p.v_ds);
  }
  std::vector<float> output() const { return convert_to_float(out.download()); }
};

// Runs cuda::prefill on the device copy; returns the whole bf16 output as floats (poisoned first).
inline std::vector<float> run_dense_on_gpu(const DenseProblem& p, const cuda::PrefillOptions& options) {
  DenseOnDevice dev(p);
  dev.out.poison();
  cuda::prefill(dev.args, options);
  FP8KV_CUDA_CHECK(cudaDeviceSynchronize());
  return dev.output();
}

struct ErrorReport {
  double gpu = 0.0;    // relative L2 error of the kernel vs the float64 reference, checked rows
  double naive = 0.0;  // same for the naive same-precision implementation
  size_t nan = 0;      // NaN elements anywhere in the kernel's output (unwritten = poison = NaN)
};

// Runs the problem on the GPU and both CPU implementations on the last `rows` rows per sequence.
// PrefillOptions that force tile sizes (0 = chosen per launch), the rest default.
inline cuda::PrefillOptions tile_options(int query_tile, int key_tile) {
  cuda::PrefillOptions options;
  options.query_tile = query_tile;
  options.key_tile = key_tile;
  return options;
}

inline ErrorReport check_dense(const DenseProblem& p, int rows, const cuda::PrefillOptions& options = {}) {
  const std::vector<float> gpu = run_dense_on_gpu(p, options);
  const RowSlice s = last_rows(p, rows);
  const std::vector<float> ref = reference_on_slice(p, s);
  const std::vector<float> naive = naive_on_slice(p, s);
  std::vector<float> gpu_slice(ref.size());
  const size_t row_elems = static_cast<size_t>(p.hq * p.d);
  for (size_t r = 0; r < s.source.size(); ++r) {
    std::copy_n(gpu.begin() + static_cast<int64_t>(static_cast<size_t>(s.source[r]) * row_elems), row_elems,
                gpu_slice.begin() + static_cast<int64_t>(r * row_elems));
  }
  ErrorReport e;
  e.nan = count_nan(gpu);
  e.gpu = relative_l2_error(gpu_slice, ref);
  e.naive = relative_l2_error(naive, ref);
  return e;
}

inline void expect_within_bound(const ErrorReport& e) {
  EXPECT_EQ(e.nan, 0u) << "unwritten or NaN output elements";
  EXPECT_LE(e.gpu, kErrorFactor * e.naive + kErrorFloor)
      << "kernel error " << e.gpu << " vs naive same-precision error " << e.naive;
  EXPECT_FALSE(std::isnan(e.gpu));
}

}  // namespace fp8kv::testing
