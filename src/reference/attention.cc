// The reference attention: prefill (dense varlen), paged decode and paged prefill.
//
// All three reduce to the same step. For one (sequence, query head) the keys and values of its KV
// head are gathered and dequantised to float64 (stored value times scale, an exact product in
// double), then each query row attends to its visible prefix of keys with a float64 softmax
// (max subtracted) and float64 sums; the result is rounded once to the output dtype.
// Work items are (sequence, query head) pairs, run in parallel (detail::parallel_for).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "fp8kv/reference.h"
#include "reference/common.h"

namespace fp8kv::reference {
namespace {

// Keys and values of one (sequence, KV head), dequantised: row j of k/v is key/value j.
struct HeadKv {
  int64_t length = 0;
  int head_dim = 0;
  std::vector<double> k, v;  // [length, head_dim]

  HeadKv(int64_t length_, int head_dim_)
      : length(length_),
        head_dim(head_dim_),
        k(static_cast<size_t>(length_ * head_dim_)),
        v(static_cast<size_t>(length_ * head_dim_)) {}
};

// q.k over head_dim channels (a multiple of 4: validate() allows 64, 128, 256), in float64 with
// four partial sums, so the sum is not one long chain of dependent additions (this loop is most
// of the reference's time at 128k keys).
double dot(const double* q, const double* k, int head_dim) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  for (int c = 0; c < head_dim; c += 4) {
    s0 += q[c] * k[c];
    s1 += q[c + 1] * k[c + 1];
    s2 += q[c + 2] * k[c + 2];
    s3 += q[c + 3] * k[c + 3];
  }
  return (s0 + s1) + (s2 + s3);
}

// out[head_dim] = softmax(scale * q.K[:visible]^T) V[:visible]; all zeros when visible <= 0.
void attend(const double* q, const HeadKv& kv, int64_t visible, double softmax_scale, double* out,
            std::vector<double>& scores) {
  const int d = kv.head_dim;
  std::fill(out, out + d, 0.0);
  if (visible <= 0) return;
  scores.resize(static_cast<size_t>(visible));
  double max_score = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < visible; ++j) {
    scores[static_cast<size_t>(j)] = softmax_scale * dot(q, kv.k.data() + j * d, d);
    max_score = std::max(max_score, scores[static_cast<size_t>(j)]);
  }
  double sum = 0.0;
  for (int64_t j = 0; j < visible; ++j) {
    const double p = std::exp(scores[static_cast<size_t>(j)] - max_score);
    sum += p;
    const double* v = kv.v.data() + j * d;
    for (int c = 0; c < d; ++c) out[c] += p * v[c];
  }
  for (int c = 0; c < d; ++c) out[c] /= sum;
}

// Descale of an optional [1] / [num_kv_heads] tensor for KV head `kv_head`; undefined means 1.
double descale(const TensorRef& t, int kv_head) {
  if (!t.defined()) return 1.0;
  return t.ptr<const float>()[t.size(0) == 1 ? 0 : kv_head];
}

// Gathers the first `length` tokens of a sequence from its pages, dequantised.
HeadKv gather_paged(const PagedKvLayer& cache, const int32_t* block_table, int64_t length, int kv_head) {
  const PagedLayout& layout = cache.layout;
  HeadKv kv(length, layout.head_dim);
  const bool fp8 = is_fp8(cache.dtype);
  for (int64_t j = 0; j < length; ++j) {
    const int64_t block = block_table[j / layout.block_size];
    const int position = static_cast<int>(j % layout.block_size);
    const double k_scale =
        fp8 ? stored_scale(cache.granularity, cache.k_scale, cache.k_token_scale, layout, block, kv_head, position) : 1.0;
    const double v_scale =
        fp8 ? stored_scale(cache.granularity, cache.v_scale, cache.v_token_scale, layout, block, kv_head, position) : 1.0;
    const int64_t offset = layout.token_offset(block, kv_head, position);
    for (int c = 0; c < layout.head_dim; ++c) {
      kv.k[static_cast<size_t>(j * layout.head_dim + c)] = detail::load(cache.k, cache.dtype, offset + c) * k_scale;
      kv.v[static_cast<size_t>(j * layout.head_dim + c)] = detail::load(cache.v, cache.dtype, offset + c) * v_scale;
    }
  }
  return kv;
}

// Loads query row `row` of head `head` ([rows, heads, d]) times its descale, as float64.
void load_query(const TensorRef& q, int64_t row, int head, double q_scale, double* out) {
  const int64_t heads = q.size(1), d = q.size(2);
  const int64_t base = (row * heads + head) * d;
  for (int64_t c = 0; c < d; ++c) out[c] = detail::load(q.data, q.dtype, base + c) * q_scale;
}

void store_row(const TensorRef& out, int64_t row, int head, const double* values) {
  const int64_t heads = out.size(1), d = out.size(2);
  const int64_t base = (row * heads + head) * d;
  for (int64_t c = 0; c < d; ++c) detail::store_rounded(out.data, out.dtype, base + c, values[c]);
}

// Attends query rows [row0, row0 + len_q) of head `head` to `kv` and stores the outputs. Causal
// masking is bottom-right aligned: the last query sees every key.
void attend_rows(const TensorRef& q_in, const TensorRef& out_rows, int64_t row0, int64_t len_q, int head,
                 double q_scale, const HeadKv& kv, bool causal, float softmax_scale) {
  const size_t d = static_cast<size_t>(kv.head_dim);
  std::vector<double> q(d), out(d), scores;
  for (int64_t i = 0; i < len_q; ++i) {
    const int64_t visible = causal ? std::min(kv.length, i + (kv.length - len_q) + 1) : kv.length;
    load_query(q_in, row0 + i, head, q_scale, q.data());
    attend(q.data(), kv, visible, softmax_scale, out.data(), scores);
    store_row(out_rows, row0 + i, head, out.data());
  }
}

}  // namespace

void paged_decode(const DecodeArgs& args) {
  detail::require_cpu(args.cache.device, "cache");
  validate(args);
  const int64_t batch = args.q.size(0);
  const int q_heads = static_cast<int>(args.q.size(1));
  const int group = q_heads / args.cache.layout.num_kv_heads;
  const int64_t max_blocks = args.block_tables.size(1);
  const int32_t* tables = args.block_tables.ptr<const int32_t>();
  const int32_t* lens = args.seq_lens.ptr<const int32_t>();
  detail::parallel_for(batch * q_heads, [&](int64_t item) {
    const int64_t b = item / q_heads;
    const int h = static_cast<int>(item % q_heads);
    const HeadKv kv = gather_paged(args.cache, tables + b * max_blocks, lens[b], h / group);
    attend_rows(args.q, args.out, b, 1, h, 1.0, kv, false, args.softmax_scale);
  });
}

void prefill(const PrefillArgs& args) {
  detail::require_cpu(args.q.device, "q");
  validate(args);
  const int64_t batch = args.cu_seqlens_q.size(0) - 1;
  const int q_heads = static_cast<int>(args.q.size(1));
  const int kv_heads = static_cast<int>(args.k.size(1));
  const int group = q_heads / kv_heads;
  const int d = static_cast<int>(args.q.size(2));
  const int32_t* cu_q = args.cu_seqlens_q.ptr<const int32_t>();
  const int32_t* cu_k = args.cu_seqlens_k.ptr<const int32_t>();
  detail::parallel_for(batch * q_heads, [&](int64_t item) {
    const int64_t b = item / q_heads;
    const int h = static_cast<int>(item % q_heads);
    const int kv_head = h / group;
    const int64_t len_q = cu_q[b + 1] - cu_q[b];
    const int64_t len_k = cu_k[b + 1] - cu_k[b];
    HeadKv kv(len_k, d);
    const double k_scale = descale(args.k_descale, kv_head);
    const double v_scale = descale(args.v_descale, kv_head);
    for (int64_t j = 0; j < len_k; ++j) {
      const int64_t base = ((cu_k[b] + j) * kv_heads + kv_head) * d;
      for (int c = 0; c < d; ++c) {
        kv.k[static_cast<size_t>(j * d + c)] = detail::load(args.k.data, args.k.dtype, base + c) * k_scale;
        kv.v[static_cast<size_t>(j * d + c)] = detail::load(args.v.data, args.v.dtype, base + c) * v_scale;
      }
    }
    attend_rows(args.q, args.out, cu_q[b], len_q, h, descale(args.q_descale, kv_head), kv, args.causal,
                args.softmax_scale);
  });
}

void paged_prefill(const PagedPrefillArgs& args) {
  detail::require_cpu(args.cache.device, "cache");
  validate(args);
  const int64_t batch = args.block_tables.size(0);
  const int q_heads = static_cast<int>(args.q.size(1));
  const int group = q_heads / args.cache.layout.num_kv_heads;
  const int64_t max_blocks = args.block_tables.size(1);
  const int32_t* tables = args.block_tables.ptr<const int32_t>();
  const int32_t* lens = args.seq_lens.ptr<const int32_t>();
  const int32_t* cu_q = args.cu_seqlens_q.ptr<const int32_t>();
  detail::parallel_for(batch * q_heads, [&](int64_t item) {
    const int64_t b = item / q_heads;
    const int h = static_cast<int>(item % q_heads);
    const int kv_head = h / group;
    const int64_t len_q = cu_q[b + 1] - cu_q[b];
    if (len_q == 0) return;
    const HeadKv kv = gather_paged(args.cache, tables + b * max_blocks, lens[b], kv_head);
    // Always causal: the new tokens are the last len_q of the sequence.
    attend_rows(args.q, args.out, cu_q[b], len_q, h, descale(args.q_descale, kv_head), kv, true,
                args.softmax_scale);
  });
}

}  // namespace fp8kv::reference
