// One test per class of bad input for the attention argument structs: each must fail with an
// InvalidArgument naming the offending argument.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "common/expect_error.h"
#include "fp8kv/attention.h"
#include "fp8kv/error.h"
#include "fp8kv/kv_cache.h"

namespace fp8kv {
namespace {

constexpr int kHeadsKv = 2, kHeadsQ = 8, kDim = 64, kBs = 16, kBlocks = 8, kBatch = 2;

template <typename Args>
void expect_rejected(const Args& args, const std::string& argument) {
  testing::expect_invalid_argument([&] { validate(args); }, argument);
}

class ValidateTest : public ::testing::Test {
 protected:
  ValidateTest() : cache_(spec()) {
    q_.assign(kBatch * kHeadsQ * kDim, 0.0f);
    out_.assign(q_.size(), 0.0f);
    tables_ = {0, 1, 2, 3, 4, 5, 6, 7};
    lens_ = {17, 64};
    kv_.assign(3 * kHeadsKv * kDim, 0.0f);
    slots_ = {0, 5, -1};
    positions_ = {0, 1, 2};
    rope_.assign(4 * kDim, 0.5f);
    cu_q_ = {0, 1, 3};
    paged_lens_ = {1, 40};
  }
  static KvCacheSpec spec() {
    KvCacheSpec s;
    s.num_layers = 1;
    s.num_kv_heads = kHeadsKv;
    s.head_dim = kDim;
    s.block_size = kBs;
    s.num_blocks = kBlocks;
    s.dtype = DType::kFp8E4M3;
    s.granularity = ScaleGranularity::kPerHead;
    return s;
  }
  DecodeArgs decode() {
    DecodeArgs a;
    a.q = TensorRef(q_.data(), DType::kFloat32, {kBatch, kHeadsQ, kDim});
    a.cache = cache_.layer(0);
    a.block_tables = TensorRef(tables_.data(), DType::kInt32, {kBatch, 4});
    a.seq_lens = TensorRef(lens_.data(), DType::kInt32, {kBatch});
    a.out = TensorRef(out_.data(), DType::kFloat32, {kBatch, kHeadsQ, kDim});
    a.softmax_scale = 0.125f;
    return a;
  }
  CacheWriteArgs write() {
    CacheWriteArgs a;
    a.key = TensorRef(kv_.data(), DType::kFloat32, {3, kHeadsKv, kDim});
    a.value = TensorRef(kv_.data(), DType::kFloat32, {3, kHeadsKv, kDim});
    a.slot_mapping = TensorRef(slots_.data(), DType::kInt64, {3});
    a.cache = cache_.layer(0);
    return a;
  }
  PrefillArgs prefill() {
    PrefillArgs a;
    a.q = TensorRef(q_.data(), DType::kFloat32, {kBatch, kHeadsQ, kDim});
    a.k = TensorRef(kv_.data(), DType::kFloat32, {3, kHeadsKv, kDim});
    a.v = TensorRef(kv_.data(), DType::kFloat32, {3, kHeadsKv, kDim});
    a.cu_seqlens_q = TensorRef(cu_q_.data(), DType::kInt32, {3});
    cu_k_ = {0, 2, 3};
    a.cu_seqlens_k = TensorRef(cu_k_.data(), DType::kInt32, {3});
    cu_q_ = {0, 1, 2};
    a.out = TensorRef(out_.data(), DType::kFloat32, {kBatch, kHeadsQ, kDim});
    a.softmax_scale = 0.125f;
    return a;
  }
  PagedPrefillArgs paged_prefill() {
    PagedPrefillArgs a;
    cu_q_ = {0, 1, 2};
    a.q = TensorRef(q_.data(), DType::kFloat32, {kBatch, kHeadsQ, kDim});
    a.cache = cache_.layer(0);
    a.block_tables = TensorRef(tables_.data(), DType::kInt32, {kBatch, 4});
    a.cu_seqlens_q = TensorRef(cu_q_.data(), DType::kInt32, {kBatch + 1});
    a.seq_lens = TensorRef(paged_lens_.data(), DType::kInt32, {kBatch});
    a.out = TensorRef(out_.data(), DType::kFloat32, {kBatch, kHeadsQ, kDim});
    a.softmax_scale = 0.125f;
    return a;
  }

  KvCache cache_;
  std::vector<float> q_, out_, kv_, rope_;
  std::vector<int32_t> tables_, lens_, positions_, cu_q_, cu_k_, paged_lens_;
  std::vector<int64_t> slots_;
};

TEST_F(ValidateTest, ValidArgumentsPass) {
  EXPECT_NO_THROW(validate(decode()));
  EXPECT_NO_THROW(validate(write()));
  EXPECT_NO_THROW(validate(prefill()));
  EXPECT_NO_THROW(validate(paged_prefill()));
  CacheWriteArgs w = write();
  w.positions = TensorRef(positions_.data(), DType::kInt32, {3});
  w.rope.cos_sin = TensorRef(rope_.data(), DType::kFloat32, {4, kDim});
  EXPECT_NO_THROW(validate(w));
}

TEST_F(ValidateTest, Shape) {
  DecodeArgs d = decode();
  d.q = TensorRef(q_.data(), DType::kFloat32, {kBatch, kHeadsQ, 32});
  expect_rejected(d, "q");
  d = decode();
  d.out = TensorRef(out_.data(), DType::kFloat32, {kBatch, kHeadsQ});
  expect_rejected(d, "out");
  d = decode();
  d.seq_lens = TensorRef(lens_.data(), DType::kInt32, {1});
  expect_rejected(d, "seq_lens");
  CacheWriteArgs w = write();
  w.value = TensorRef(kv_.data(), DType::kFloat32, {2, kHeadsKv, kDim});
  expect_rejected(w, "value");
  PrefillArgs p = prefill();
  p.v = TensorRef(kv_.data(), DType::kFloat32, {3, 1, kDim});
  expect_rejected(p, "v");
  p = prefill();
  p.cu_seqlens_k = TensorRef(cu_k_.data(), DType::kInt32, {2});
  expect_rejected(p, "cu_seqlens_k");
}

TEST_F(ValidateTest, Dtype) {
  DecodeArgs d = decode();
  d.q.dtype = DType::kFp8E4M3;  // decode queries are not FP8
  expect_rejected(d, "q");
  d = decode();
  d.block_tables.dtype = DType::kInt64;
  expect_rejected(d, "block_tables");
  CacheWriteArgs w = write();
  w.value.dtype = DType::kBFloat16;  // differs from key
  expect_rejected(w, "value");
  w = write();
  w.slot_mapping.dtype = DType::kInt32;
  expect_rejected(w, "slot_mapping");
  PrefillArgs p = prefill();
  p.k.dtype = DType::kBFloat16;
  expect_rejected(p, "k");
  p = prefill();
  p.out.dtype = DType::kFp8E4M3;
  expect_rejected(p, "out");
}

TEST_F(ValidateTest, HeadRatioAndHeadDim) {
  DecodeArgs d = decode();
  d.q = TensorRef(q_.data(), DType::kFloat32, {kBatch, 3, kDim});
  d.out = TensorRef(out_.data(), DType::kFloat32, {kBatch, 3, kDim});
  expect_rejected(d, "q");
  d.q = TensorRef(q_.data(), DType::kFloat32, {kBatch, 1, kDim});  // fewer q heads than kv heads
  d.out = TensorRef(out_.data(), DType::kFloat32, {kBatch, 1, kDim});
  expect_rejected(d, "q");
  PrefillArgs p = prefill();
  p.q = TensorRef(q_.data(), DType::kFloat32, {2, 2, 96});  // 96 has no kernel
  expect_rejected(p, "q");
}

TEST_F(ValidateTest, BlockTableOutOfRange) {
  tables_[1] = kBlocks;  // sequence 0 (17 tokens) reads blocks [0] and [1]
  expect_rejected(decode(), "block_tables");
  tables_[1] = -3;
  expect_rejected(decode(), "block_tables");
  tables_[1] = 1;
  tables_[2] = -1;  // past sequence 0's blocks: padding, never read
  EXPECT_NO_THROW(validate(decode()));
  tables_[7] = 99;  // sequence 1 (40 tokens) reads [0..2] of its row
  paged_lens_ = {1, 64};
  expect_rejected(paged_prefill(), "block_tables");
}

TEST_F(ValidateTest, SeqLenBeyondTable) {
  lens_[1] = 4 * kBs + 1;
  expect_rejected(decode(), "seq_lens");
  lens_[1] = -1;
  expect_rejected(decode(), "seq_lens");
  paged_lens_ = {0, 40};  // fewer keys than the sequence's one new query
  expect_rejected(paged_prefill(), "seq_lens");
}

TEST_F(ValidateTest, CumulativeLengths) {
  PrefillArgs p = prefill();
  cu_k_ = {0, 3, 2};
  expect_rejected(p, "cu_seqlens_k");
  p = prefill();
  cu_q_ = {1, 1, 2};
  expect_rejected(p, "cu_seqlens_q");
  p = prefill();
  cu_k_ = {0, 1, 2};  // ends short of total_k = 3
  expect_rejected(p, "cu_seqlens_k");
}

TEST_F(ValidateTest, Scales) {
  for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    DecodeArgs d = decode();
    std::vector<float> scales{1.0f, bad};
    d.cache.v_scale = scales.data();
    expect_rejected(d, "cache.v_scale");
    d = decode();
    d.softmax_scale = bad;
    expect_rejected(d, "softmax_scale");

    PrefillArgs p = prefill();
    std::vector<uint8_t> fp8(q_.size());
    p.q = TensorRef(fp8.data(), DType::kFp8E4M3, {kBatch, kHeadsQ, kDim});
    p.k = TensorRef(fp8.data(), DType::kFp8E4M3, {3, kHeadsKv, kDim});
    p.v = TensorRef(fp8.data(), DType::kFp8E4M3, {3, kHeadsKv, kDim});
    p.k_descale = TensorRef(scales.data(), DType::kFloat32, {2});
    expect_rejected(p, "k_descale");
    scales[1] = 0.5f;
    EXPECT_NO_THROW(validate(p));
    p.k_descale = TensorRef(scales.data(), DType::kFloat32, {3});  // neither [1] nor [num_kv_heads]
    expect_rejected(p, "k_descale");
  }
  PrefillArgs p = prefill();  // descales belong to FP8 inputs only
  std::vector<float> one{1.0f};
  p.q_descale = TensorRef(one.data(), DType::kFloat32, {1});
  expect_rejected(p, "q_descale");
}

TEST_F(ValidateTest, SlotsPositionsAndRope) {
  slots_[1] = kBlocks * kBs;
  expect_rejected(write(), "slot_mapping");
  slots_[1] = 5;
  CacheWriteArgs w = write();
  w.positions = TensorRef(positions_.data(), DType::kInt32, {3});
  expect_rejected(w, "positions");  // positions without a table
  w.rope.cos_sin = TensorRef(rope_.data(), DType::kFloat32, {4, kDim});
  positions_[2] = 4;
  expect_rejected(w, "positions");
  positions_[2] = 2;
  w.rope.cos_sin = TensorRef(rope_.data(), DType::kFloat32, {2, 2 * kDim});
  expect_rejected(w, "rope.cos_sin");
}

TEST_F(ValidateTest, DevicesAndMissingTensors) {
  DecodeArgs d = decode();
  d.out.device = Device::kCuda;
  expect_rejected(d, "out");
  d = decode();
  d.block_tables = TensorRef();
  expect_rejected(d, "block_tables");
  d = decode();
  d.cache.k_scale = nullptr;
  expect_rejected(d, "cache.k_scale");
}

TEST_F(ValidateTest, ZeroLengthContextIsValid) {
  lens_ = {0, 0};
  EXPECT_NO_THROW(validate(decode()));
  PrefillArgs p = prefill();
  cu_k_ = {0, 0, 3};
  EXPECT_NO_THROW(validate(p));
}

}  // namespace
}  // namespace fp8kv
