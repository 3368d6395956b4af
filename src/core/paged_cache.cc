#include "fp8kv/paged_cache.h"

#include <limits>
#include <string>

#include "fp8kv/error.h"

namespace fp8kv {
namespace {

bool is_power_of_two(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

void check_block_size(int64_t block_size, const std::string& argument) {
  FP8KV_REQUIRE(is_power_of_two(block_size) && block_size >= kMinBlockSize && block_size <= kMaxBlockSize, argument,
                "must be a power of two in [", kMinBlockSize, ", ", kMaxBlockSize, "], got ", block_size);
}

// Block ids travel in int32 block tables.
void check_num_blocks(int64_t num_blocks, const std::string& argument) {
  FP8KV_REQUIRE(num_blocks > 0 && num_blocks <= std::numeric_limits<int32_t>::max(), argument,
                "must be in [1, 2^31 - 1] (block tables hold int32 ids), got ", num_blocks);
}

// A row of head_dim channels must be whole 16-byte vectors in FP8 (the decode kernel's load unit).
constexpr int kHeadDimMultiple = 16;

void check_head_dim(int64_t head_dim, const std::string& argument) {
  FP8KV_REQUIRE(head_dim > 0 && head_dim % kHeadDimMultiple == 0, argument,
                "must be a positive multiple of ", kHeadDimMultiple, " (whole 16-byte FP8 rows), got ", head_dim);
}

}  // namespace

PagedLayout paged_layout(DType storage, int num_kv_heads, int block_size, int head_dim) {
  check_block_size(block_size, "block_size");
  const int sub = is_fp8(storage) && block_size > kFp8SubBlockSize ? kFp8SubBlockSize : block_size;
  return PagedLayout{num_kv_heads, static_cast<int16_t>(block_size), static_cast<int16_t>(sub), head_dim};
}

void KvCacheSpec::validate() const {
  FP8KV_REQUIRE(num_layers > 0, "num_layers", "must be > 0, got ", num_layers);
  FP8KV_REQUIRE(num_kv_heads > 0, "num_kv_heads", "must be > 0, got ", num_kv_heads);
  check_head_dim(head_dim, "head_dim");
  check_block_size(block_size, "block_size");
  check_num_blocks(num_blocks, "num_blocks");
  FP8KV_REQUIRE(is_kv_storage_dtype(dtype), "kv_cache_dtype",
                "must be one of bf16, fp16, fp8_e4m3, fp8_e5m2, got ", dtype_name(dtype));
}

void PagedKvLayer::validate(const char* argument) const {
  const std::string a = argument;
  FP8KV_REQUIRE(layout.num_kv_heads > 0, a + ".num_kv_heads", "must be > 0, got ", layout.num_kv_heads);
  check_head_dim(layout.head_dim, a + ".head_dim");
  check_block_size(layout.block_size, a + ".block_size");
  // The storage dtype fixes the layout (paged_layout()); the kernels are tested on exactly that one.
  FP8KV_REQUIRE(is_kv_storage_dtype(dtype), a + ".dtype", "must be one of bf16, fp16, fp8_e4m3, fp8_e5m2, got ",
                dtype_name(dtype));
  const int sub = paged_layout(dtype, layout.num_kv_heads, layout.block_size, layout.head_dim).sub_block_size;
  FP8KV_REQUIRE(layout.sub_block_size == sub, a + ".sub_block_size", "must be ", sub, " for ", dtype_name(dtype),
                " storage with block_size ", layout.block_size, " (paged_layout() chooses it), got ",
                layout.sub_block_size);
  FP8KV_REQUIRE(layout.block_elements() <= std::numeric_limits<int32_t>::max(), a + ".num_kv_heads",
                "num_kv_heads * block_size * head_dim must fit in int32 (offsets inside a block), got ",
                layout.block_elements());
  check_num_blocks(num_blocks, a + ".num_blocks");
  FP8KV_REQUIRE(k != nullptr, a + ".k", "the K pool is required (null pointer)");
  FP8KV_REQUIRE(v != nullptr, a + ".v", "the V pool is required (null pointer)");
  if (!is_fp8(dtype)) return;
  if (granularity == ScaleGranularity::kPerToken) {
    FP8KV_REQUIRE(k_token_scale != nullptr, a + ".k_token_scale", "per_token FP8 storage needs per-token K scales");
    FP8KV_REQUIRE(v_token_scale != nullptr, a + ".v_token_scale", "per_token FP8 storage needs per-token V scales");
  } else {
    FP8KV_REQUIRE(k_scale != nullptr, a + ".k_scale", scale_granularity_name(granularity),
                  " FP8 storage needs static K scales");
    FP8KV_REQUIRE(v_scale != nullptr, a + ".v_scale", scale_granularity_name(granularity),
                  " FP8 storage needs static V scales");
  }
}

}  // namespace fp8kv
