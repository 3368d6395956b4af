// Device code of the CUDA engine backend: the small memory-bound layers around the GEMMs and the
// attention kernels. Activations are bf16; every reduction runs in float32.
#pragma once

#include <cuda_bf16.h>

#include <cfloat>
#include <cstdint>

#include "fp8kv/fp8.h"
#include "fp8kv/half.h"

namespace fp8kv::engine_cuda {

using bf16 = __nv_bfloat16;

constexpr int kWarp = 32;
constexpr int kRowThreads = 256;  // one block per row for hidden-size rows: 8 warps cover 4096 in 2 passes

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// RMSNorm, one warp per row (rows are hidden_size long or head_dim long for QK-norm).
__global__ void rms_norm_kernel(const bf16* __restrict__ x,  // [rows, dim]
                                const bf16* __restrict__ w,  // [dim]
                                float eps, bf16* out,        // [rows, dim], may alias x
                                int64_t rows, int dim) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;
  const bf16* in = x + row * dim;
  float sum = 0.0f;
  for (int c = lane; c < dim; c += kWarp) {
    const float v = __bfloat162float(in[c]);
    sum += v * v;
  }
  const float inv = rsqrtf(warp_sum(sum) / static_cast<float>(dim) + eps);
  for (int c = lane; c < dim; c += kWarp) {
    out[row * dim + c] = __float2bfloat16(__bfloat162float(in[c]) * inv * __bfloat162float(w[c]));
  }
}

// out[i, :] = table[ids[i], :] in 16-byte vectors (hidden is a multiple of 8).
__global__ void embed_kernel(const int32_t* __restrict__ ids, const uint4* __restrict__ table,  // [vocab, hidden/8]
                             uint4* __restrict__ out, int vectors_per_row) {
  const int64_t row = blockIdx.x;
  const int64_t id = ids[row];
  for (int c = threadIdx.x; c < vectors_per_row; c += blockDim.x) out[row * vectors_per_row + c] = table[id * vectors_per_row + c];
}

// out[i, :] = x[rows[i], :]; a row is `vectors` 16-byte vectors (or `elems` 4-byte floats).
template <typename Vec>
__global__ void gather_rows_kernel(const Vec* __restrict__ x, const int32_t* __restrict__ rows, Vec* __restrict__ out,
                                   int per_row) {
  const int64_t r = blockIdx.x;
  const int64_t src = rows[r];
  for (int c = threadIdx.x; c < per_row; c += blockDim.x) out[r * per_row + c] = x[src * per_row + c];
}

// Rotate-half RoPE in place: channel i pairs with i + rotary/2. One thread per pair.
__global__ void rope_kernel(bf16* x,                          // [tokens, heads, head_dim]
                            const int32_t* __restrict__ pos,  // [tokens]
                            const float* __restrict__ cos_sin,  // [max_pos, rotary]: cos | sin
                            int64_t tokens, int heads, int head_dim, int rotary) {
  const int half = rotary / 2;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= tokens * heads * half) return;
  const int c = static_cast<int>(i % half);
  const int64_t th = i / half;  // token * heads + head
  const int64_t t = th / heads;
  const float* row = cos_sin + static_cast<int64_t>(pos[t]) * rotary;
  const float cos = row[c], sin = row[half + c];
  bf16* v = x + th * head_dim;
  const float a = __bfloat162float(v[c]), b = __bfloat162float(v[c + half]);
  v[c] = __float2bfloat16(a * cos - b * sin);
  v[c + half] = __float2bfloat16(b * cos + a * sin);
}

__global__ void swiglu_kernel(const bf16* __restrict__ gate, const bf16* __restrict__ up, bf16* __restrict__ out,
                              int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = __bfloat162float(gate[i]);
  out[i] = __float2bfloat16(g / (1.0f + __expf(-g)) * __bfloat162float(up[i]));
}

// x += y (residual add), or x[i, j] += bias[j] when `cols` > 0 and y is the bias.
__global__ void add_kernel(bf16* x, const bf16* __restrict__ y, int64_t n, int64_t cols) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float b = __bfloat162float(cols > 0 ? y[i % cols] : y[i]);
  x[i] = __float2bfloat16(__bfloat162float(x[i]) + b);
}

// Largest logit per row, lowest index on ties; a NaN anywhere in the row gives -1.
__global__ void argmax_kernel(const float* __restrict__ logits, int32_t* __restrict__ out, int64_t vocab) {
  __shared__ float best_v[kRowThreads];
  __shared__ int64_t best_i[kRowThreads];
  __shared__ int nan_seen;
  if (threadIdx.x == 0) nan_seen = 0;
  __syncthreads();
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float v = -FLT_MAX;
  int64_t idx = vocab;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float x = row[j];
    if (isnan(x)) nan_seen = 1;
    if (x > v || idx == vocab) {
      v = x;
      idx = j;
    }
  }
  best_v[threadIdx.x] = v;
  best_i[threadIdx.x] = idx;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) {
      const float ov = best_v[threadIdx.x + s];
      const int64_t oi = best_i[threadIdx.x + s];
      if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
        best_v[threadIdx.x] = ov;
        best_i[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = nan_seen ? -1 : static_cast<int32_t>(best_i[0]);
}

// Counter-based N(0,1): splitmix64 of (seed, index) -> two uniforms -> Box-Muller. Deterministic for
// a seed, independent of the launch shape.
__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ float normal_at(uint64_t seed, int64_t i) {
  const uint64_t r = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(i)));
  const float u1 = (static_cast<float>(r >> 40) + 1.0f) * (1.0f / 16777217.0f);  // (0, 1]
  const float u2 = static_cast<float>((r >> 16) & 0xFFFFFFu) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * __logf(u1)) * __cosf(6.28318530718f * u2);
}

template <typename T>
__global__ void fill_normal_kernel(T* out, int64_t n, uint64_t seed, float stddev) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = fp8kv::from_float<T>(normal_at(seed, i) * stddev);
}

template <>
__global__ void fill_normal_kernel<bf16>(bf16* out, int64_t n, uint64_t seed, float stddev) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = __float2bfloat16(normal_at(seed, i) * stddev);
}

__global__ void fill_constant_kernel(float* out, int64_t n, float value) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = value;
}

}  // namespace fp8kv::engine_cuda
