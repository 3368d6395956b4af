// Host side of prefill / paged prefill: validation at the API edge, the one kernel-selection
// function, TMA descriptors, and the launch of the instantiation that selection picked.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/prefill_sm90/traits.cuh"
#include "fp8kv/cuda_prefill.h"
#include "fp8kv/error.h"

namespace fp8kv::cuda {
namespace {

using sm90::PrefillParams;
using LaunchFn = void (*)(const PrefillParams&, int, cudaStream_t);

constexpr double kLog2e = 1.4426950408889634;

struct KernelChoice {
  LaunchFn launch;
  int box_elems;    // TMA box inner extent (one swizzle width of a row)
  int block_n;      // keys per KV tile
  int block_m;      // query rows per CTA
  CUtensorMapSwizzle swizzle;
};

template <class Traits>
KernelChoice choice_of() {
  return KernelChoice{&sm90::launch_prefill<Traits>, Traits::kBoxElems, Traits::kBlockN, Traits::kBlockM,
                      Traits::kRowSwizzle == sm90::Swizzle::k128B ? CU_TENSOR_MAP_SWIZZLE_128B
                                                                  : CU_TENSOR_MAP_SWIZZLE_64B};
}

// The one list of kernels this build has; supported(), dispatch and the benchmark all ask here.
// Returns launch = nullptr for an unsupported combination.
// `tiles` (dense FP8; prefill_tiles): 128 x 256 (head dim 128) and 192 x 128 (head dims 64 and
// 128) have kernels of their own; every other kernel is 128 x 128.
KernelChoice select_kernel(DType dtype, int head_dim, bool paged, PrefillTiles tiles = {}) {
  using sm90::ElementBf16;
  using sm90::ElementE4M3;
  using sm90::PrefillTraits;
  if (dtype == DType::kFp8E4M3) {
    if (head_dim == 128 && !paged && tiles.key == 256) {
      return choice_of<PrefillTraits<ElementE4M3, 128, false, 256>>();
    }
    if (head_dim == 128 && !paged && tiles.query == 192) {
      return choice_of<PrefillTraits<ElementE4M3, 128, false, 128, 3>>();
    }
    if (head_dim == 128) return paged ? choice_of<PrefillTraits<ElementE4M3, 128, true>>()
                                      : choice_of<PrefillTraits<ElementE4M3, 128, false>>();
    if (head_dim == 64 && !paged && tiles.query == 192) {
      return choice_of<PrefillTraits<ElementE4M3, 64, false, 128, 3>>();
    }
    if (head_dim == 64) return paged ? choice_of<PrefillTraits<ElementE4M3, 64, true>>()
                                     : choice_of<PrefillTraits<ElementE4M3, 64, false>>();
  }
  if (dtype == DType::kBFloat16 && !paged) {
    if (head_dim == 128) return choice_of<PrefillTraits<ElementBf16, 128, false>>();
    if (head_dim == 64) return choice_of<PrefillTraits<ElementBf16, 64, false>>();
  }
  return KernelChoice{nullptr, 0, 0, 0, CU_TENSOR_MAP_SWIZZLE_NONE};
}

KernelChoice require_kernel(DType dtype, int head_dim, bool paged, PrefillTiles tiles = {}) {
  const KernelChoice c = select_kernel(dtype, head_dim, paged, tiles);
  if (c.launch == nullptr) {
    throw Unsupported(std::string(paged ? "paged_prefill" : "prefill") + " with " + dtype_name(dtype) +
                      " inputs and head_dim " + std::to_string(head_dim) +
                      " (supported: fp8_e4m3 or bfloat16 (dense only), head_dim 64 or 128)");
  }
  int device = 0, major = 0, minor = 0;
  FP8KV_CUDA_CHECK(cudaGetDevice(&device));
  FP8KV_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FP8KV_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major != 9 || minor != 0) {
    throw Unsupported("the prefill kernels need an sm_90a (Hopper) device, this one is sm_" +
                      std::to_string(major * 10 + minor));
  }
  return c;
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult result{};
    FP8KV_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &result));
    if (result != cudaDriverEntryPointSuccess || ptr == nullptr) {
      throw Error("fp8kv: the CUDA driver has no cuTensorMapEncodeTiled (TMA needs driver >= 12.0)");
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// A tiled TMA descriptor over a row-major tensor whose dims are given innermost first.
template <int kRank>
CUtensorMap make_tensor_map(const void* base, DType dtype, const cuuint64_t (&dims)[kRank],
                            const cuuint32_t (&box)[kRank], CUtensorMapSwizzle swizzle, const char* argument) {
  cuuint64_t strides[kRank - 1];
  cuuint64_t stride = dtype_size(dtype);
  for (int i = 0; i < kRank - 1; ++i) {
    stride *= dims[i];
    strides[i] = stride;
  }
  cuuint32_t element_strides[kRank];
  for (int i = 0; i < kRank; ++i) element_strides[i] = 1;
  CUtensorMap map{};
  const CUresult r = tensor_map_encoder()(
      &map, dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_UINT8, kRank,
      const_cast<void*>(base), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
      CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FP8KV_REQUIRE(r == CUDA_SUCCESS, argument,
                "cannot be described to the TMA unit (base must be 16-byte aligned), cuTensorMapEncodeTiled error ",
                static_cast<int>(r));
  return map;
}

// Descale pointer + stride: [1] -> stride 0, [num_kv_heads] -> stride 1, undefined -> null (1.0).
void set_descale(const TensorRef& t, const float*& ptr, int& stride) {
  ptr = t.defined() ? t.ptr<const float>() : nullptr;
  stride = (t.defined() && t.numel() > 1) ? 1 : 0;
}

void check_cuda_tensor(const TensorRef& t, const char* name) {
  FP8KV_REQUIRE(t.device == Device::kCuda, name, "must be on the CUDA device for cuda::prefill");
}

// Query heads per grid section (see tile_scheduler.cuh): under causal masking, as many whole
// KV-head groups as keep the section's K/V (of a sequence of `keys` keys) within kSectionBytes of
// L2, so that the blocks run longest-first over several heads; without masking every block costs
// the same and one KV-head group per section keeps the fewest K/V bytes live. H100, A/B against
// one head after another: longest-first over all heads took causal 4096 from 131-133 to 111-112
// us (Qwen3-0.6B batch 1) but made 16k 1-3% slower, its 32 MiB of FP8 K/V crowding L2; with
// 16 MiB sections 4096 keeps the gain and 16k is 1.00-1.05x.
constexpr int64_t kSectionBytes = 16ll << 20;

int heads_per_section(int64_t keys, int head_dim, int elem_bytes, int num_kv_heads, int head_group, bool causal) {
  int kv_heads = 1;
  if (causal) {
    const int64_t per_kv_head = std::max<int64_t>(1, keys * head_dim * 2 * elem_bytes);
    const int64_t fit = std::max<int64_t>(1, kSectionBytes / per_kv_head);
    for (int d = 1; d <= num_kv_heads; ++d) {
      if (num_kv_heads % d == 0 && d <= fit) kv_heads = d;
    }
  }
  return kv_heads * head_group;
}

// The parameters the dense and paged kernels fill alike: shapes, the softmax scale, causality, the
// grid sections (sized for sequences of `keys` keys) and the accumulation options.
void set_common_params(PrefillParams& p, int64_t batch, int num_q_heads, int num_kv_heads, int head_dim, int elem_bytes,
                       int64_t keys, float softmax_scale, bool causal, const PrefillOptions& options) {
  p.batch = static_cast<int>(batch);
  p.num_q_heads = num_q_heads;
  p.num_kv_heads = num_kv_heads;
  p.head_group = num_q_heads / num_kv_heads;
  p.softmax_scale_log2 = static_cast<float>(softmax_scale * kLog2e);
  p.causal = causal;
  p.heads_per_section = heads_per_section(keys, head_dim, elem_bytes, num_kv_heads, p.head_group, causal);
  p.two_level = options.two_level_accumulation;
  p.one_level_max_keys = options.one_level_max_keys;
}

// An upper bound on sum_b ceil(len_b / kBlockM) that needs only total_q and batch.
int grid_blocks(int64_t total_q, int64_t batch, int block_m) {
  return static_cast<int>((total_q + (block_m - 1) * batch) / block_m);
}

}  // namespace

bool prefill_supported(DType dtype, int head_dim, bool paged) {
  return select_kernel(dtype, head_dim, paged).launch != nullptr;
}

// H100 (2026-11-25, bench prefill, both tile widths in one run): 256-key tiles were 2.6-6.1% faster
// at Qwen3-0.6B/8B batch 4 and 8 x 4096 and 4.7-6.5% at 16k (2048-4096 work tiles), but (an earlier
// run) 2% slower at Qwen3-8B 1 x 4096 (1024 work tiles) and 8% at Qwen3-0.6B 1 x 4096 (512). The
// 192 x 128 kernel took over those shapes (fourteenth session's final bench: 1.3-5.7% faster
// than 128 x 256 at 16k, 0.3-3.2% at batch 4 and 8 x 4096) and more: against 128 x 128 it was 6%
// faster at Qwen3-8B 1 x 4096 (1024 query blocks x heads), level at Qwen3-0.6B 1 x 4096 (512), and
// 3-11% slower at 1024 keys per sequence. Once its warpgroups passed the K/V tiles their rows do
// not see and its blocks were aligned to the sequence end (fifteenth session), against 128 x 128
// in one call (3 rounds, us; in parentheses 128-row query blocks x query heads): faster at
// Qwen3-0.6B 1 x 4096 (512) 95.3-97.7 against 100.2-101.7, Qwen3-8B 8 x 512 (1024) 54.8-55.0
// against 55.2-55.4, Qwen3-0.6B 8 x 1024 (1024) 71.5-71.7 against 74.1-74.5, Qwen3-8B 4 x 1024
// (1024) 68.5-69.4 against 72.7-73.0 and 8 x 1024 (2048) 130.0-130.2 against 140.1-140.8; slower
// at Qwen3-0.6B 4 x 1024 (512) 42.8-43.1 against 42.0-42.2 and Qwen3-8B 1 x 1024 (256) 26.2-26.3
// against 24.9.
constexpr int64_t kWideMinKeysPerSequence = 2048;
constexpr int64_t kWideMinWorkTiles = 2048;  // 128-row query blocks x query heads, for 128 x 256
constexpr int64_t kRows192MinKeysPerSequence = 512;
constexpr int64_t kRows192MinWorkTiles = 1024;  // the same count, for 192 x 128
constexpr int64_t kRows192LongMinKeysPerSequence = 4096;
constexpr int64_t kRows192LongMinWorkTiles = 512;  // from 4096 keys per sequence
// Head dim 64 (fourteenth session, against 128 x 128 in the same run): 192 x 128 was 14% faster at
// 1 x 4096 with 16 heads (512 query blocks x heads), 21% at 8 x 4096 and 30% at 1 x 16384. Shorter
// sequences were not measured there.
constexpr int64_t kRows192MinKeysPerSequenceD64 = 2048;
constexpr int64_t kRows192MinWorkTilesD64 = 512;

namespace {
// Whether the defaults pick 192 x 128 over 128 x 128 (the measurements above).
bool rows192_pays(bool head_dim_64, int64_t keys_per_sequence, int64_t work_tiles) {
  if (head_dim_64) return keys_per_sequence >= kRows192MinKeysPerSequenceD64 && work_tiles >= kRows192MinWorkTilesD64;
  return (keys_per_sequence >= kRows192MinKeysPerSequence && work_tiles >= kRows192MinWorkTiles) ||
         (keys_per_sequence >= kRows192LongMinKeysPerSequence && work_tiles >= kRows192LongMinWorkTiles);
}

// prefill_tiles for options that have been validated.
PrefillTiles choose_tiles(const PrefillArgs& args, const PrefillOptions& options) {
  const bool fp8 = args.q.dtype == DType::kFp8E4M3 && args.q.ndim == 3;
  const bool fp8_d128 = fp8 && args.q.size(2) == 128, fp8_d64 = fp8 && args.q.size(2) == 64;
  if (options.key_tile == 256) {
    FP8KV_REQUIRE(fp8_d128, "key_tile",
                  "256-key tiles exist for FP8 E4M3 prefill at head dim 128 only (dense, not paged)");
    return PrefillTiles{128, 256};
  }
  if (options.query_tile == 192) {
    FP8KV_REQUIRE(fp8_d128 || fp8_d64, "query_tile",
                  "192-row query tiles exist for FP8 E4M3 prefill at head dim 64 and 128 only (dense, not paged)");
    return PrefillTiles{192, 128};
  }
  const PrefillTiles narrow{128, 128};
  if ((options.key_tile == 128 && options.query_tile == 128) || !(fp8_d128 || fp8_d64) || args.k.ndim < 1 ||
      args.cu_seqlens_q.ndim != 1 || args.cu_seqlens_q.size(0) < 2) {
    return narrow;
  }
  const int64_t batch = args.cu_seqlens_q.size(0) - 1;
  const int64_t work_tiles = static_cast<int64_t>(grid_blocks(args.q.size(0), batch, 128)) * args.q.size(1);
  const int64_t keys_per_sequence = args.k.size(0) / batch;
  if (options.query_tile == 0 && rows192_pays(fp8_d64, keys_per_sequence, work_tiles)) return PrefillTiles{192, 128};
  if (fp8_d64) return narrow;
  if (options.key_tile == 0 && keys_per_sequence >= kWideMinKeysPerSequence && work_tiles >= kWideMinWorkTiles) {
    return PrefillTiles{128, 256};
  }
  return narrow;
}
}  // namespace

PrefillTiles prefill_tiles(const PrefillArgs& args, const PrefillOptions& options) {
  options.validate();
  return choose_tiles(args, options);
}

int prefill_key_tile(const PrefillArgs& args, const PrefillOptions& options) {
  return prefill_tiles(args, options).key;
}

void prefill(const PrefillArgs& args, const PrefillOptions& options, void* stream) {
  validate(args);
  options.validate();
  check_cuda_tensor(args.q, "q");
  FP8KV_REQUIRE(args.out.dtype == DType::kBFloat16, "out", "cuda::prefill writes bfloat16, got ", dtype_name(args.out.dtype));
  const int head_dim = static_cast<int>(args.q.size(2));
  const int64_t total_q = args.q.size(0), total_k = args.k.size(0);
  const int64_t batch = args.cu_seqlens_q.size(0) - 1;
  const KernelChoice k = require_kernel(args.q.dtype, head_dim, false, choose_tiles(args, options));
  const int num_q_heads = static_cast<int>(args.q.size(1)), num_kv_heads = static_cast<int>(args.k.size(1));
  if (total_q == 0 || batch == 0) return;
  FP8KV_REQUIRE(total_k < (int64_t{1} << 31) && total_q < (int64_t{1} << 31), "q",
                "total lengths must fit in int32 (TMA coordinates)");

  PrefillParams p{};
  const cuuint32_t box_m = static_cast<cuuint32_t>(k.block_m), box_n = static_cast<cuuint32_t>(k.block_n);
  const cuuint32_t box_inner = static_cast<cuuint32_t>(k.box_elems);
  p.tma_q = make_tensor_map<3>(args.q.data, args.q.dtype,
                               {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(num_q_heads), static_cast<cuuint64_t>(total_q)},
                               {box_inner, 1, box_m}, k.swizzle, "q");
  // total_k = 0 (all sequences empty) still needs a valid descriptor: describe one row.
  const cuuint64_t rows_k = static_cast<cuuint64_t>(total_k > 0 ? total_k : 1);
  p.tma_k = make_tensor_map<3>(args.k.data, args.k.dtype,
                               {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(num_kv_heads), rows_k},
                               {box_inner, 1, box_n}, k.swizzle, "k");
  p.tma_v = make_tensor_map<3>(args.v.data, args.v.dtype,
                               {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(num_kv_heads), rows_k},
                               {box_inner, 1, box_n}, k.swizzle, "v");
  p.cu_seqlens_q = args.cu_seqlens_q.ptr<const int32_t>();
  p.cu_seqlens_k = args.cu_seqlens_k.ptr<const int32_t>();
  p.out = args.out.ptr<__nv_bfloat16>();
  set_descale(args.q_descale, p.q_descale, p.q_descale_stride);
  set_descale(args.k_descale, p.k_descale, p.k_descale_stride);
  set_descale(args.v_descale, p.v_descale, p.v_descale_stride);
  set_common_params(p, batch, num_q_heads, num_kv_heads, head_dim, static_cast<int>(dtype_size(args.q.dtype)),
                    total_k / std::max<int64_t>(1, batch), args.softmax_scale, args.causal, options);
  k.launch(p, grid_blocks(total_q, batch, k.block_m), static_cast<cudaStream_t>(stream));
}

void paged_prefill(const PagedPrefillArgs& args, const PrefillOptions& options, void* stream) {
  validate(args);
  options.validate();
  FP8KV_REQUIRE(options.key_tile != 256, "key_tile",
                "paged_prefill has 128-key tiles only (256-key tiles are for dense FP8 prefill at head dim 128)");
  FP8KV_REQUIRE(options.query_tile != 192, "query_tile",
                "paged_prefill has 128-row query tiles only (192-row tiles are for dense FP8 prefill)");
  check_cuda_tensor(args.q, "q");
  FP8KV_REQUIRE(args.out.dtype == DType::kBFloat16, "out", "cuda::paged_prefill writes bfloat16, got ",
                dtype_name(args.out.dtype));
  FP8KV_REQUIRE(args.q.dtype == DType::kFp8E4M3, "q",
                "cuda::paged_prefill reads FP8 E4M3 queries (quantise them with cuda::rope_quantize), got ",
                dtype_name(args.q.dtype));
  FP8KV_REQUIRE(args.cache.dtype == DType::kFp8E4M3, "cache", "cuda::paged_prefill reads an FP8 E4M3 cache, got ",
                dtype_name(args.cache.dtype));
  const PagedLayout& layout = args.cache.layout;
  const KernelChoice k = require_kernel(args.q.dtype, layout.head_dim, true);
  const int64_t total_q = args.q.size(0);
  const int64_t batch = args.block_tables.size(0);
  if (total_q == 0 || batch == 0) return;
  const int num_q_heads = static_cast<int>(args.q.size(1));

  PrefillParams p{};
  const cuuint32_t box_inner = static_cast<cuuint32_t>(k.box_elems);
  p.tma_q = make_tensor_map<3>(args.q.data, args.q.dtype,
                               {static_cast<cuuint64_t>(layout.head_dim), static_cast<cuuint64_t>(num_q_heads), static_cast<cuuint64_t>(total_q)},
                               {box_inner, 1, static_cast<cuuint32_t>(k.block_m)}, k.swizzle, "q");
  // The pool as [num_blocks][sub-blocks][num_kv_heads][sub_block_size][head_dim] (paged_cache.h;
  // one sub-block per block for 16-bit storage): one box is up to 128 rows of one sub-block.
  const cuuint64_t pool_dims[5] = {static_cast<cuuint64_t>(layout.head_dim), static_cast<cuuint64_t>(layout.sub_block_size),
                                   static_cast<cuuint64_t>(layout.num_kv_heads),
                                   static_cast<cuuint64_t>(layout.block_size / layout.sub_block_size),
                                   static_cast<cuuint64_t>(args.cache.num_blocks)};
  const cuuint32_t page_box[5] = {box_inner, static_cast<cuuint32_t>(std::min<int>(layout.sub_block_size, k.block_n)), 1, 1, 1};
  p.tma_k = make_tensor_map<5>(args.cache.k, args.cache.dtype, pool_dims, page_box, k.swizzle, "cache");
  p.tma_v = make_tensor_map<5>(args.cache.v, args.cache.dtype, pool_dims, page_box, k.swizzle, "cache");
  p.cu_seqlens_q = args.cu_seqlens_q.ptr<const int32_t>();
  p.seq_lens = args.seq_lens.ptr<const int32_t>();
  p.block_tables = args.block_tables.ptr<const int32_t>();
  p.max_blocks_per_seq = static_cast<int>(args.block_tables.size(1));
  p.layout = layout;
  if (args.cache.has_token_scales()) {
    p.k_token_scale = args.cache.k_token_scale;
    p.v_token_scale = args.cache.v_token_scale;
  } else {
    const int stride = args.cache.granularity == ScaleGranularity::kPerHead ? 1 : 0;
    p.k_descale = args.cache.k_scale;
    p.v_descale = args.cache.v_scale;
    p.k_descale_stride = p.v_descale_stride = stride;
  }
  set_descale(args.q_descale, p.q_descale, p.q_descale_stride);
  p.out = args.out.ptr<__nv_bfloat16>();
  set_common_params(p, batch, num_q_heads, layout.num_kv_heads, layout.head_dim,
                    static_cast<int>(dtype_size(args.cache.dtype)),
                    args.block_tables.size(1) * static_cast<int64_t>(layout.block_size), args.softmax_scale, true, options);
  k.launch(p, grid_blocks(total_q, batch, k.block_m), static_cast<cudaStream_t>(stream));
}

}  // namespace fp8kv::cuda
