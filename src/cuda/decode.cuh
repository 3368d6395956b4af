// Device code of paged decode attention (flash-decoding over the HND paged cache).
//
// Grid: x = (KV head, head chunk), y = work item (sequence, split). A thread block of kDecodeWarps
// warps covers one split's key range for kGroup query heads that share one KV head, so each K/V
// byte is read from memory once for all of them and reused from registers (GQA).
//
// Inside a warp, a token row of kHeadDim elements is kRowThreads lanes x one 16-byte vector each
// (FP8: 16 elements per lane, 16-bit: 8), so a warp reads kRows whole rows per load instruction;
// kUnroll steps of K and V vectors are issued before the first is used (2 * kUnroll 16-byte loads in
// flight per lane). Every lane keeps its own online-softmax state (m, l, acc) for the tokens of its
// row; states are merged across rows (shuffles) and warps (shared memory) once at the end.
//
// Scales: per_tensor / per_head K scales are folded into q (q * softmax_scale * log2(e) * k_scale,
// so the scores come out in log2 units for exp2), V scales multiply the output once. per_token
// scales multiply each score (K) and each probability (V) as the token is consumed.
//
// Splits: work items of a sequence with several splits write an FP32 partial output normalised by
// its own softmax sum plus its log2-sum-exp; decode_merge_kernel (decode.cu) combines them. A sequence with a
// single split writes the final output directly.
#pragma once

#include <cstdint>

#include "cuda/cache_write.cuh"
#include "cuda/fp8_convert.cuh"
#include "fp8kv/paged_cache.h"

namespace fp8kv::cuda_detail {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
// K+V loads kept in flight per lane: 2 * kUnroll 16-byte vectors (128 bytes per lane, 4 KiB per
// warp), enough with 8+ resident warps per SM to cover HBM latency at full bandwidth.
constexpr int kUnroll = 4;
constexpr float kLog2e = 1.4426950408889634f;

// Largest number of query heads one thread block handles for a storage type: q and the output
// accumulator take kGroup * (elements per lane) registers each, kept <= 64 so that both fit with the
// in-flight vectors under the 255-register limit without spilling.
template <typename Storage>
constexpr int max_decode_group() {
  return 64 / StorageTraits<Storage>::kPerVector;
}

struct DecodeParams {
  const void* q;                 // [batch, num_q_heads, head_dim] bf16/fp16
  void* out;                     // [batch, num_q_heads, head_dim] bf16/fp16
  bool q_fp16;                   // dtype of q: fp16 (true) or bf16
  bool out_fp16;                 // dtype of out
  const void* k_cache;           // [num_blocks, num_kv_heads, block_size, head_dim] storage
  const void* v_cache;           // [num_blocks, num_kv_heads, block_size, head_dim] storage
  const float* k_token_scale;    // [num_blocks, num_kv_heads, block_size], per_token only (else null)
  const float* v_token_scale;    // [num_blocks, num_kv_heads, block_size], per_token only
  const float* k_scale;          // [1] per_tensor / [num_kv_heads] per_head; null = 1 (16-bit, per_token)
  const float* v_scale;          // same shape as k_scale
  bool per_head;                 // static scales indexed by KV head
  const int32_t* block_tables;   // [batch, max_blocks_per_seq]
  int32_t max_blocks_per_seq;
  const int32_t* seq_lens;       // [batch]
  int64_t num_blocks;
  PagedLayout layout;
  int32_t log2_block_size;       // block_size is a power of two (KvCacheSpec::validate)
  int32_t num_q_heads;
  int32_t group;                 // query heads per KV head
  int32_t head_chunks;           // group / kGroup thread blocks per KV head
  float score_scale;             // softmax_scale * log2(e)
  const int4* work;              // [num_work]: (sequence, split, splits of the sequence, first work item)
  int32_t chunk_tokens;          // keys per split
  float* partial_o;              // [num_work, num_q_heads, head_dim] fp32, split results (normalised)
  float* partial_lse;            // [num_work, num_q_heads] fp32, log2-sum-exp2 of each split's scores
  uint32_t* error_flags;
};

template <typename T>
__device__ __forceinline__ uint4 load_vector(const T* ptr) {
  // Each K/V byte is read exactly once: bypass L1 allocation so it does not evict the block table
  // and scales that other warps reuse.
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(ptr));
  return v;
}

__device__ __forceinline__ float load_activation(const void* base, int64_t index, bool fp16) {
  return fp16 ? to_float(static_cast<const Fp16*>(base)[index]) : to_float(static_cast<const Bf16*>(base)[index]);
}

__device__ __forceinline__ void store_activation(void* base, int64_t index, float x, bool fp16) {
  if (fp16) {
    static_cast<__half*>(base)[index] = __float2half_rn(x);
  } else {
    static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(x);
  }
}

template <typename Storage, int kHeadDim, int kGroup>
__global__ void __launch_bounds__(kDecodeThreads) paged_decode_kernel(const DecodeParams p) {
  using Traits = StorageTraits<Storage>;
  constexpr int kE = Traits::kPerVector;         // elements per lane (one 16-byte vector)
  constexpr int kRowThreads = kHeadDim / kE;     // lanes per token row
  constexpr int kRows = 32 / kRowThreads;        // token rows per warp per load
  constexpr int kWarpTile = kRows * kUnroll;     // tokens per warp per iteration
  constexpr int kBlockTile = kWarpTile * kDecodeWarps;
  static_assert(kRowThreads >= 1 && kRowThreads <= 32, "a token row must fit in one warp");
  static_assert(kGroup <= max_decode_group<Storage>(), "register budget: see max_decode_group()");

  __shared__ float smem_acc[kDecodeWarps][kGroup][kHeadDim];
  __shared__ float smem_m[kDecodeWarps][kGroup];
  __shared__ float smem_l[kDecodeWarps][kGroup];

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int row = lane / kRowThreads;
  const int c0 = (lane % kRowThreads) * kE;
  const int kv_head = static_cast<int>(blockIdx.x) / p.head_chunks;
  const int q_head0 = kv_head * p.group + (static_cast<int>(blockIdx.x) % p.head_chunks) * kGroup;
  const int4 item = p.work[blockIdx.y];
  const int seq = item.x;
  const int split = item.y;
  const int num_splits = item.z;

  // Lengths come from the device: clamp what the block table and the plan can serve, and flag it.
  int seq_len = p.seq_lens[seq];
  const int64_t table_capacity = static_cast<int64_t>(p.max_blocks_per_seq) << p.log2_block_size;
  const int64_t planned = static_cast<int64_t>(num_splits) * p.chunk_tokens;
  if (seq_len < 0 || seq_len > table_capacity || seq_len > planned) {
    if (threadIdx.x == 0 && blockIdx.x == 0) atomicOr(p.error_flags, kErrorSeqLenOutOfRange);
    seq_len = seq_len < 0 ? 0 : static_cast<int>(min(static_cast<int64_t>(seq_len), min(table_capacity, planned)));
  }
  const int t_begin = split * p.chunk_tokens;
  const int t_end = min(seq_len, t_begin + p.chunk_tokens);

  // Static scales: K's folds into q, V's multiplies the final output.
  const int scale_index = p.per_head ? kv_head : 0;
  const float k_static = p.k_scale != nullptr ? p.k_scale[scale_index] : 1.0f;
  const float v_static = p.v_scale != nullptr ? p.v_scale[scale_index] : 1.0f;
  const bool per_token = p.k_token_scale != nullptr;

  float q[kGroup][kE];
  {
    const float q_scale = p.score_scale * k_static;
    const int64_t q_row0 = (static_cast<int64_t>(seq) * p.num_q_heads + q_head0) * kHeadDim + c0;
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
#pragma unroll
      for (int e = 0; e < kE; ++e) q[g][e] = load_activation(p.q, q_row0 + g * kHeadDim + e, p.q_fp16) * q_scale;
    }
  }

  float m[kGroup];
  float l[kGroup];
  float acc[kGroup][kE];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < kE; ++e) acc[g][e] = 0.0f;
  }

  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const Storage* k_cache = static_cast<const Storage*>(p.k_cache);
  const Storage* v_cache = static_cast<const Storage*>(p.v_cache);
  const int position_mask = (1 << p.log2_block_size) - 1;

  for (int tile = t_begin + warp * kWarpTile; tile < t_end; tile += kBlockTile) {
    uint4 k_vec[kUnroll];
    uint4 v_vec[kUnroll];
    float k_tok[kUnroll];
    float v_tok[kUnroll];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int token = tile + u * kRows + row;
      valid[u] = token < t_end;
      int64_t block = valid[u] ? table[token >> p.log2_block_size] : 0;
      if (block < 0 || block >= p.num_blocks) {
        atomicOr(p.error_flags, kErrorBlockIdOutOfRange);
        valid[u] = false;
        block = 0;
      }
      const int position = token & position_mask;
      const int64_t offset = p.layout.token_offset(block, kv_head, position) + c0;
      k_vec[u] = valid[u] ? load_vector(k_cache + offset) : make_uint4(0, 0, 0, 0);
      v_vec[u] = valid[u] ? load_vector(v_cache + offset) : make_uint4(0, 0, 0, 0);
      if (per_token) {
        const int64_t s = p.layout.token_scale_offset(block, kv_head, position);
        k_tok[u] = valid[u] ? p.k_token_scale[s] : 0.0f;
        v_tok[u] = valid[u] ? p.v_token_scale[s] : 0.0f;
      } else {
        k_tok[u] = 1.0f;
        v_tok[u] = 1.0f;
      }
    }

    // Scores in log2 units: partial dot products over this lane's elements, summed across the row.
    float s[kUnroll][kGroup];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float k[kE];
      Traits::unpack(k_vec[u], k);
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < kE; ++e) dot = fmaf(q[g][e], k[e], dot);
        s[u][g] = dot;
      }
    }
#pragma unroll
    for (int offset = kRowThreads / 2; offset > 0; offset /= 2) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int g = 0; g < kGroup; ++g) s[u][g] += __shfl_xor_sync(0xffffffffu, s[u][g], offset);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) s[u][g] = valid[u] ? s[u][g] * k_tok[u] : -INFINITY;
    }

    // Online softmax, rescaling the accumulator once per kUnroll tokens.
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      float m_new = m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) m_new = fmaxf(m_new, s[u][g]);
      // All keys so far masked: keep exp2 arguments finite (-inf - -inf would be NaN).
      const float m_ref = m_new == -INFINITY ? 0.0f : m_new;
      const float correction = exp2f(m[g] - m_ref);
      float sum = 0.0f;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const float prob = exp2f(s[u][g] - m_ref);
        sum += prob;
        s[u][g] = prob * v_tok[u];  // the V scale of a per-token cache weighs the probability
      }
      l[g] = l[g] * correction + sum;
      m[g] = m_new;
#pragma unroll
      for (int e = 0; e < kE; ++e) acc[g][e] *= correction;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float v[kE];
      Traits::unpack(v_vec[u], v);
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
#pragma unroll
        for (int e = 0; e < kE; ++e) acc[g][e] = fmaf(s[u][g], v[e], acc[g][e]);
      }
    }
  }

  // Merge the rows of the warp (lanes kRowThreads apart hold the same channels of other tokens).
#pragma unroll
  for (int offset = kRowThreads; offset < 32; offset *= 2) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const float m_other = __shfl_xor_sync(0xffffffffu, m[g], offset);
      const float l_other = __shfl_xor_sync(0xffffffffu, l[g], offset);
      const float m_new = fmaxf(m[g], m_other);
      const float m_ref = m_new == -INFINITY ? 0.0f : m_new;
      const float a = exp2f(m[g] - m_ref);
      const float b = exp2f(m_other - m_ref);
      l[g] = l[g] * a + l_other * b;
      m[g] = m_new;
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        const float other = __shfl_xor_sync(0xffffffffu, acc[g][e], offset);
        acc[g][e] = acc[g][e] * a + other * b;
      }
    }
  }
  if (row == 0) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
#pragma unroll
      for (int e = 0; e < kE; ++e) smem_acc[warp][g][c0 + e] = acc[g][e];
      if (lane == 0) {
        smem_m[warp][g] = m[g];
        smem_l[warp][g] = l[g];
      }
    }
  }
  __syncthreads();

  // Merge the warps; each thread finishes some (head, channel) outputs.
  const bool direct = num_splits == 1;
  for (int index = static_cast<int>(threadIdx.x); index < kGroup * kHeadDim; index += kDecodeThreads) {
    const int g = index / kHeadDim;
    const int c = index % kHeadDim;
    float m_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) m_max = fmaxf(m_max, smem_m[w][g]);
    const float m_ref = m_max == -INFINITY ? 0.0f : m_max;
    float l_sum = 0.0f;
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float weight = exp2f(smem_m[w][g] - m_ref);
      l_sum += smem_l[w][g] * weight;
      o += smem_acc[w][g][c] * weight;
    }
    // No keys (empty sequence or split): the output is zero, by definition (attention.h).
    o = l_sum > 0.0f ? o / l_sum * v_static : 0.0f;
    const int head = q_head0 + g;
    if (direct) {
      store_activation(p.out, (static_cast<int64_t>(seq) * p.num_q_heads + head) * kHeadDim + c, o, p.out_fp16);
    } else {
      const int64_t w_row = static_cast<int64_t>(blockIdx.y) * p.num_q_heads + head;
      p.partial_o[w_row * kHeadDim + c] = o;
      if (c == 0) p.partial_lse[w_row] = l_sum > 0.0f ? m_max + __log2f(l_sum) : -INFINITY;
    }
  }
}

template <typename Storage, int kHeadDim, int kGroup>
void launch_paged_decode_kernel(const DecodeParams& p, dim3 grid, cudaStream_t stream) {
  paged_decode_kernel<Storage, kHeadDim, kGroup><<<grid, kDecodeThreads, 0, stream>>>(p);
}

template <typename Storage, int kHeadDim>
void launch_paged_decode_group(const DecodeParams& p, int kernel_group, dim3 grid, cudaStream_t stream) {
  switch (kernel_group) {
    case 1: return launch_paged_decode_kernel<Storage, kHeadDim, 1>(p, grid, stream);
    case 2: return launch_paged_decode_kernel<Storage, kHeadDim, 2>(p, grid, stream);
    case 4: return launch_paged_decode_kernel<Storage, kHeadDim, 4>(p, grid, stream);
    case 8:
      if constexpr (8 <= max_decode_group<Storage>()) return launch_paged_decode_kernel<Storage, kHeadDim, 8>(p, grid, stream);
      break;
    default: break;
  }
}

// Launches paged_decode_kernel<Storage, head_dim, kernel_group> (kernel_group from
// decode_kernel_group(), head_dim 64/128/256). One translation unit per storage type
// (decode_<storage>.cu) instantiates it, so the four compile in parallel.
template <typename Storage>
void launch_paged_decode(const DecodeParams& p, int head_dim, int kernel_group, dim3 grid, cudaStream_t stream) {
  switch (head_dim) {
    case 64: return launch_paged_decode_group<Storage, 64>(p, kernel_group, grid, stream);
    case 128: return launch_paged_decode_group<Storage, 128>(p, kernel_group, grid, stream);
    case 256: return launch_paged_decode_group<Storage, 256>(p, kernel_group, grid, stream);
    default: break;
  }
}

extern template void launch_paged_decode<Bf16>(const DecodeParams&, int, int, dim3, cudaStream_t);
extern template void launch_paged_decode<Fp16>(const DecodeParams&, int, int, dim3, cudaStream_t);
extern template void launch_paged_decode<Fp8E4M3>(const DecodeParams&, int, int, dim3, cudaStream_t);
extern template void launch_paged_decode<Fp8E5M2>(const DecodeParams&, int, int, dim3, cudaStream_t);

}  // namespace fp8kv::cuda_detail
