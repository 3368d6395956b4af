// validate() for the attention argument structs (attention.h): the one API edge shared by the CPU
// reference and the CUDA host code. Tensors on the host are also checked element by element
// (block tables, lengths, positions, scales); device tensors can only be checked for shape.
#include <cmath>
#include <string>

#include "fp8kv/attention.h"
#include "fp8kv/error.h"

namespace fp8kv {
namespace {

// Head dims the kernels are instantiated for (and so the only ones the API accepts).
bool supported_head_dim(int64_t d) { return d == 64 || d == 128 || d == 256; }

void check_head_dim(int64_t d, const char* argument) {
  FP8KV_REQUIRE(supported_head_dim(d), argument, "head_dim must be 64, 128 or 256, got ", d);
}

void check_gqa(int64_t num_q_heads, int64_t num_kv_heads, const char* argument) {
  FP8KV_REQUIRE(num_kv_heads > 0 && num_q_heads >= num_kv_heads && num_q_heads % num_kv_heads == 0, argument,
                "num_q_heads (", num_q_heads, ") must be a positive multiple of num_kv_heads (", num_kv_heads,
                ") for grouped-query attention");
}

void check_softmax_scale(float s) {
  FP8KV_REQUIRE(std::isfinite(s) && s > 0.0f, "softmax_scale", "must be finite and > 0 (usually 1/sqrt(head_dim)), got ",
                s);
}

// bf16/fp16 everywhere; float32 only for the CPU reference.
void check_activation_dtype(const TensorRef& t, const char* argument, Device device) {
  if (device == Device::kCpu) {
    check_dtype(t, argument, {DType::kFloat32, DType::kBFloat16, DType::kFloat16});
  } else {
    check_dtype(t, argument, {DType::kBFloat16, DType::kFloat16});
  }
}

// Prefill inputs additionally accept the two FP8 formats.
void check_prefill_input_dtype(const TensorRef& t, const char* argument, Device device) {
  if (device == Device::kCpu) {
    check_dtype(t, argument, {DType::kFloat32, DType::kBFloat16, DType::kFloat16, DType::kFp8E4M3, DType::kFp8E5M2});
  } else {
    check_dtype(t, argument, {DType::kBFloat16, DType::kFloat16, DType::kFp8E4M3, DType::kFp8E5M2});
  }
}

void check_prefill_output_dtype(const TensorRef& t, const char* argument, Device device) {
  if (device == Device::kCpu) {
    check_dtype(t, argument, {DType::kFloat32, DType::kBFloat16, DType::kFloat16});
  } else {
    check_dtype(t, argument, {DType::kBFloat16});
  }
}

void check_same_dtype(const TensorRef& t, const char* argument, const TensorRef& like, const char* like_name) {
  FP8KV_REQUIRE(t.dtype == like.dtype, argument, "dtype must equal ", like_name, "'s (", dtype_name(like.dtype),
                "), got ", dtype_name(t.dtype));
}

// An index tensor (slots, positions, block tables, lengths): on `device`, of integer `dtype`, and
// of shape `expected` (-1 = any), checked in that order.
void check_index_tensor(const TensorRef& t, const char* argument, Device device, DType dtype,
                        std::initializer_list<int64_t> expected, const char* dim_names) {
  check_device(t, argument, device);
  check_dtype(t, argument, {dtype});
  check_shape(t, argument, expected, dim_names);
}

// Static scales of an FP8 per_tensor / per_head cache, when they are readable here.
void check_static_scales(const PagedKvLayer& cache) {
  if (cache.device != Device::kCpu || !is_fp8(cache.dtype) || cache.granularity == ScaleGranularity::kPerToken) return;
  const int64_t count = static_scale_count(cache.dtype, cache.granularity, cache.layout.num_kv_heads);
  validate_scales(cache.k_scale, count, "cache.k_scale");
  validate_scales(cache.v_scale, count, "cache.v_scale");
}

// An optional FP8 descale: float32 [1] or [num_kv_heads], finite and > 0 where readable.
void check_descale(const TensorRef& d, const char* argument, bool input_is_fp8, Device device, int64_t num_kv_heads) {
  if (!d.defined()) return;
  FP8KV_REQUIRE(input_is_fp8, argument, "descales apply to FP8 inputs only; leave it undefined for other dtypes");
  check_device(d, argument, device);
  check_dtype(d, argument, {DType::kFloat32});
  FP8KV_REQUIRE(d.ndim == 1 && (d.size(0) == 1 || d.size(0) == num_kv_heads), argument,
                "expected shape [1] (per tensor) or [num_kv_heads] = [", num_kv_heads, "], got ", d.shape_string());
  if (device == Device::kCpu) validate_scales(d.ptr<const float>(), d.size(0), argument);
}

// cu_seqlens [batch + 1]: starts at 0, never decreases, ends at `total`.
void check_cu_seqlens(const TensorRef& cu, const char* argument, int64_t total) {
  const int32_t* c = cu.ptr<const int32_t>();
  const int64_t n = cu.size(0);
  FP8KV_REQUIRE(c[0] == 0, argument, "must start at 0, got ", c[0]);
  for (int64_t i = 1; i < n; ++i) {
    FP8KV_REQUIRE(c[i] >= c[i - 1], argument, "must be non-decreasing, got [", i - 1, "] = ", c[i - 1], " > [", i,
                  "] = ", c[i]);
  }
  FP8KV_REQUIRE(c[n - 1] == total, argument, "last entry must equal the total length ", total, ", got ", c[n - 1]);
}

// The first ceil(seq_len / block_size) entries of each row of the block table are the blocks the
// sequence reads; they must exist. Entries past them are padding and never read.
void check_block_tables(const TensorRef& block_tables, const TensorRef& seq_lens, const PagedKvLayer& cache) {
  const int32_t* table = block_tables.ptr<const int32_t>();
  const int32_t* lens = seq_lens.ptr<const int32_t>();
  const int64_t batch = block_tables.size(0);
  const int64_t max_blocks = block_tables.size(1);
  const int64_t bs = cache.layout.block_size;
  for (int64_t b = 0; b < batch; ++b) {
    FP8KV_REQUIRE(lens[b] >= 0, "seq_lens", "must be >= 0, got seq_lens[", b, "] = ", lens[b]);
    const int64_t used = (lens[b] + bs - 1) / bs;
    FP8KV_REQUIRE(used <= max_blocks, "seq_lens", "seq_lens[", b, "] = ", lens[b], " needs ", used,
                  " blocks of ", bs, " tokens but block_tables has ", max_blocks, " columns");
    for (int64_t i = 0; i < used; ++i) {
      const int32_t block = table[b * max_blocks + i];
      FP8KV_REQUIRE(block >= 0 && block < cache.num_blocks, "block_tables", "entry [", b, "][", i, "] = ", block,
                    " is outside [0, ", cache.num_blocks, ")");
    }
  }
}

}  // namespace

void validate(const CacheWriteArgs& args) {
  args.cache.validate("cache");
  const Device dev = args.cache.device;
  const PagedLayout& layout = args.cache.layout;
  check_head_dim(layout.head_dim, "cache");
  check_device(args.key, "key", dev);
  check_activation_dtype(args.key, "key", dev);
  check_shape(args.key, "key", {-1, layout.num_kv_heads, layout.head_dim}, "[num_tokens, num_kv_heads, head_dim]");
  const int64_t n = args.key.size(0);
  check_device(args.value, "value", dev);
  check_same_dtype(args.value, "value", args.key, "key");
  check_shape(args.value, "value", {n, layout.num_kv_heads, layout.head_dim}, "[num_tokens, num_kv_heads, head_dim]");
  check_index_tensor(args.slot_mapping, "slot_mapping", dev, DType::kInt64, {n}, "[num_tokens]");
  if (dev == Device::kCpu) {
    const int64_t num_slots = args.cache.num_blocks * layout.block_size;
    const int64_t* slots = args.slot_mapping.ptr<const int64_t>();
    for (int64_t t = 0; t < n; ++t) {
      FP8KV_REQUIRE(slots[t] < num_slots, "slot_mapping", "slot_mapping[", t, "] = ", slots[t],
                    " is outside the cache's ", num_slots, " slots (negative means skip)");
    }
  }
  if (args.rope.cos_sin.defined()) {
    const TensorRef& table = args.rope.cos_sin;
    check_device(table, "rope.cos_sin", dev);
    check_dtype(table, "rope.cos_sin", {DType::kFloat32});
    FP8KV_REQUIRE(table.ndim == 2 && table.size(0) > 0, "rope.cos_sin",
                  "expected shape [max_position, rotary_dim], got ", table.shape_string());
    const int64_t rotary_dim = table.size(1);
    FP8KV_REQUIRE(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= layout.head_dim, "rope.cos_sin",
                  "rotary_dim (dim 1) must be even and in [2, head_dim = ", layout.head_dim, "], got ", rotary_dim);
    check_index_tensor(args.positions, "positions", dev, DType::kInt32, {n}, "[num_tokens]");
    if (dev == Device::kCpu) {
      const int32_t* pos = args.positions.ptr<const int32_t>();
      for (int64_t t = 0; t < n; ++t) {
        FP8KV_REQUIRE(pos[t] >= 0 && pos[t] < table.size(0), "positions", "positions[", t, "] = ", pos[t],
                      " is outside the RoPE table's [0, ", table.size(0), ")");
      }
    }
  } else {
    FP8KV_REQUIRE(!args.positions.defined(), "positions", "given without rope.cos_sin; pass both or neither");
  }
  check_static_scales(args.cache);
}

void validate(const DecodeArgs& args) {
  args.cache.validate("cache");
  const Device dev = args.cache.device;
  const PagedLayout& layout = args.cache.layout;
  check_device(args.q, "q", dev);
  check_activation_dtype(args.q, "q", dev);
  check_shape(args.q, "q", {-1, -1, layout.head_dim}, "[batch, num_q_heads, head_dim]");
  check_head_dim(args.q.size(2), "q");
  check_gqa(args.q.size(1), layout.num_kv_heads, "q");
  const int64_t batch = args.q.size(0);
  check_index_tensor(args.block_tables, "block_tables", dev, DType::kInt32, {batch, -1}, "[batch, max_blocks_per_seq]");
  check_index_tensor(args.seq_lens, "seq_lens", dev, DType::kInt32, {batch}, "[batch]");
  check_device(args.out, "out", dev);
  check_activation_dtype(args.out, "out", dev);
  check_shape(args.out, "out", {batch, args.q.size(1), layout.head_dim}, "[batch, num_q_heads, head_dim]");
  check_softmax_scale(args.softmax_scale);
  if (dev == Device::kCpu) check_block_tables(args.block_tables, args.seq_lens, args.cache);
  check_static_scales(args.cache);
}

void validate(const PrefillArgs& args) {
  check_device(args.q, "q", args.q.device);
  const Device dev = args.q.device;
  check_prefill_input_dtype(args.q, "q", dev);
  FP8KV_REQUIRE(args.q.ndim == 3, "q", "expected shape [total_q, num_q_heads, head_dim], got ", args.q.shape_string());
  const int64_t total_q = args.q.size(0);
  const int64_t num_q_heads = args.q.size(1);
  const int64_t head_dim = args.q.size(2);
  check_head_dim(head_dim, "q");
  check_device(args.k, "k", dev);
  check_same_dtype(args.k, "k", args.q, "q");
  check_shape(args.k, "k", {-1, -1, head_dim}, "[total_k, num_kv_heads, head_dim]");
  const int64_t total_k = args.k.size(0);
  const int64_t num_kv_heads = args.k.size(1);
  check_gqa(num_q_heads, num_kv_heads, "q");
  check_device(args.v, "v", dev);
  check_same_dtype(args.v, "v", args.q, "q");
  check_shape(args.v, "v", {total_k, num_kv_heads, head_dim}, "[total_k, num_kv_heads, head_dim]");
  check_device(args.cu_seqlens_q, "cu_seqlens_q", dev);
  check_dtype(args.cu_seqlens_q, "cu_seqlens_q", {DType::kInt32});
  FP8KV_REQUIRE(args.cu_seqlens_q.ndim == 1 && args.cu_seqlens_q.size(0) >= 1, "cu_seqlens_q",
                "expected shape [batch + 1], got ", args.cu_seqlens_q.shape_string());
  const int64_t batch = args.cu_seqlens_q.size(0) - 1;
  check_index_tensor(args.cu_seqlens_k, "cu_seqlens_k", dev, DType::kInt32, {batch + 1},
                     "[batch + 1] (batch from cu_seqlens_q)");
  check_device(args.out, "out", dev);
  check_prefill_output_dtype(args.out, "out", dev);
  check_shape(args.out, "out", {total_q, num_q_heads, head_dim}, "[total_q, num_q_heads, head_dim]");
  check_softmax_scale(args.softmax_scale);
  const bool fp8 = is_fp8(args.q.dtype);
  check_descale(args.q_descale, "q_descale", fp8, dev, num_kv_heads);
  check_descale(args.k_descale, "k_descale", fp8, dev, num_kv_heads);
  check_descale(args.v_descale, "v_descale", fp8, dev, num_kv_heads);
  if (dev == Device::kCpu) {
    check_cu_seqlens(args.cu_seqlens_q, "cu_seqlens_q", total_q);
    check_cu_seqlens(args.cu_seqlens_k, "cu_seqlens_k", total_k);
  }
}

void validate(const PagedPrefillArgs& args) {
  args.cache.validate("cache");
  const Device dev = args.cache.device;
  const PagedLayout& layout = args.cache.layout;
  check_device(args.q, "q", dev);
  check_prefill_input_dtype(args.q, "q", dev);
  check_shape(args.q, "q", {-1, -1, layout.head_dim}, "[total_q, num_q_heads, head_dim]");
  check_head_dim(args.q.size(2), "q");
  check_gqa(args.q.size(1), layout.num_kv_heads, "q");
  const int64_t total_q = args.q.size(0);
  check_device(args.block_tables, "block_tables", dev);
  check_dtype(args.block_tables, "block_tables", {DType::kInt32});
  FP8KV_REQUIRE(args.block_tables.ndim == 2, "block_tables", "expected shape [batch, max_blocks_per_seq], got ",
                args.block_tables.shape_string());
  const int64_t batch = args.block_tables.size(0);
  check_index_tensor(args.cu_seqlens_q, "cu_seqlens_q", dev, DType::kInt32, {batch + 1},
                     "[batch + 1] (batch from block_tables)");
  check_index_tensor(args.seq_lens, "seq_lens", dev, DType::kInt32, {batch}, "[batch]");
  check_device(args.out, "out", dev);
  check_prefill_output_dtype(args.out, "out", dev);
  check_shape(args.out, "out", {total_q, args.q.size(1), layout.head_dim}, "[total_q, num_q_heads, head_dim]");
  check_softmax_scale(args.softmax_scale);
  check_descale(args.q_descale, "q_descale", is_fp8(args.q.dtype), dev, layout.num_kv_heads);
  if (dev == Device::kCpu) {
    check_cu_seqlens(args.cu_seqlens_q, "cu_seqlens_q", total_q);
    const int32_t* cu = args.cu_seqlens_q.ptr<const int32_t>();
    const int32_t* lens = args.seq_lens.ptr<const int32_t>();
    for (int64_t b = 0; b < batch; ++b) {
      FP8KV_REQUIRE(lens[b] >= cu[b + 1] - cu[b], "seq_lens", "seq_lens[", b, "] = ", lens[b],
                    " must be >= its query count ", cu[b + 1] - cu[b],
                    " (the new tokens are written to the cache before attending)");
    }
    check_block_tables(args.block_tables, args.seq_lens, args.cache);
  }
  check_static_scales(args.cache);
}

}  // namespace fp8kv
