// cuda::write_kv_cache against reference::write_kv_cache: the cache bytes and per-token scales
// must be bit-identical, for every storage dtype x granularity x head dim, bf16 and fp16 inputs,
// with and without RoPE, with skipped (negative) slots and untouched slots left as they were.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/test_utils.h"
#include "fp8kv/cuda.h"
#include "fp8kv/reference.h"
#include "test_decode_common.h"

namespace fp8kv {
namespace {

using testing::DeviceBuffer;
using testing::TwinCache;

struct WriteCase {
  DType storage;
  ScaleGranularity granularity;
  int head_dim;
  DType input;
  bool rope;
  int block_size;  // FP8 storage of 32-token blocks is two 16-token sub-blocks (paged_cache.h)
};

std::string name_of(const WriteCase& c) {
  return std::string(kv_cache_dtype_name(c.storage)) + "/" + testing::short_name(c.granularity) + "/d" +
         std::to_string(c.head_dim) + "/" + dtype_name(c.input) + (c.rope ? "/rope" : "") + "/bs" +
         std::to_string(c.block_size);
}

template <typename T>
std::vector<uint8_t> to_bytes(const std::vector<float>& x) {
  return testing::bytes_of(testing::convert_from_float<T>(x));
}

// A host tensor's bytes copied to the device, and the same view of them there (an undefined
// tensor stays undefined).
struct DeviceTensor {
  explicit DeviceTensor(const TensorRef& host) : ref(host) {
    if (!host.defined()) return;
    const auto* bytes = static_cast<const uint8_t*>(host.data);
    buffer = DeviceBuffer<uint8_t>(std::vector<uint8_t>(bytes, bytes + host.nbytes()));
    ref.data = buffer.get();
    ref.device = Device::kCuda;
  }
  DeviceBuffer<uint8_t> buffer;
  TensorRef ref;
};

// Writes `host`'s tokens into the cache twice, with reference::write_kv_cache into its host pools
// and with cuda::write_kv_cache (the same inputs copied to the device) into its device pools, and
// expects the cache bytes and per-token scales to be identical.
void expect_write_matches_reference(TwinCache& cache, CacheWriteArgs host) {
  host.cache = cache.host_layer();
  reference::write_kv_cache(host);

  const DeviceTensor key(host.key), value(host.value), slots(host.slot_mapping), positions(host.positions),
      cos_sin(host.rope.cos_sin);
  CacheWriteArgs dev;
  dev.key = key.ref;
  dev.value = value.ref;
  dev.slot_mapping = slots.ref;
  dev.positions = positions.ref;
  dev.rope.cos_sin = cos_sin.ref;
  dev.cache = cache.device_layer();
  cuda::write_kv_cache(dev);
  cuda::check_errors();

  const std::vector<uint8_t> got_k = cache.dk.download();
  const std::vector<uint8_t> got_v = cache.dv.download();
  size_t k_diff = 0, v_diff = 0, k_first = 0, v_first = 0;
  for (size_t i = 0; i < got_k.size(); ++i) {
    if (got_k[i] != cache.k[i] && k_diff++ == 0) k_first = i;
    if (got_v[i] != cache.v[i] && v_diff++ == 0) v_first = i;
  }
  EXPECT_EQ(k_diff, 0u) << "K cache bytes differ from the reference; the first at byte " << k_first << ": GPU "
                        << int{got_k[k_first]} << ", reference " << int{cache.k[k_first]};
  EXPECT_EQ(v_diff, 0u) << "V cache bytes differ from the reference; the first at byte " << v_first << ": GPU "
                        << int{got_v[v_first]} << ", reference " << int{cache.v[v_first]};
  if (cache.has_token_scales()) {
    EXPECT_EQ(testing::bytes_of(cache.dk_token.download()), testing::bytes_of(cache.k_token)) << "K token scales";
    EXPECT_EQ(testing::bytes_of(cache.dv_token.download()), testing::bytes_of(cache.v_token)) << "V token scales";
  }
}

void run_write_case(const WriteCase& c) {
  SCOPED_TRACE(name_of(c));
  constexpr int kHeads = 3;
  const int kBlockSize = c.block_size;
  const int64_t kBlocks = (112 + kBlockSize - 1) / kBlockSize;
  constexpr int64_t kTokens = 61;
  const PagedLayout layout = paged_layout(c.storage, kHeads, kBlockSize, c.head_dim);
  const size_t row_elems = static_cast<size_t>(kTokens) * kHeads * c.head_dim;
  std::vector<float> key = testing::random_normal(row_elems, testing::test_seed(), 2.0f, c.head_dim, 3);
  std::vector<float> value = testing::random_normal(row_elems, testing::test_seed(), 1.0f);
  // One all-zero row exercises the amax floor.
  std::fill(key.begin(), key.begin() + c.head_dim, 0.0f);
  // Round to the input dtype once so both sides start from the same values.
  const std::vector<uint8_t> key_bytes =
      c.input == DType::kBFloat16 ? to_bytes<Bf16>(key) : to_bytes<Fp16>(key);
  const std::vector<uint8_t> value_bytes =
      c.input == DType::kBFloat16 ? to_bytes<Bf16>(value) : to_bytes<Fp16>(value);

  // Distinct random slots, some skipped.
  std::vector<int64_t> slots(static_cast<size_t>(kBlocks * kBlockSize));
  std::iota(slots.begin(), slots.end(), 0);
  std::mt19937_64 rng(testing::test_seed());
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(static_cast<size_t>(kTokens));
  for (size_t i = 0; i < slots.size(); i += 5) slots[i] = -1;

  std::vector<int32_t> positions(static_cast<size_t>(kTokens));
  std::uniform_int_distribution<int32_t> pick(0, 4095);
  for (auto& p : positions) p = pick(rng);
  RopeConfig rope_config;
  rope_config.theta = 1e6;
  rope_config.rotary_dim = c.head_dim;
  const std::vector<float> table = build_rope_table(rope_config, 4096);

  TwinCache cache(layout, kBlocks, c.storage, c.granularity);
  cache.calibrate(key, value);
  cache.fill(0x5A);

  CacheWriteArgs host;
  host.key = TensorRef(const_cast<uint8_t*>(key_bytes.data()), c.input, {kTokens, kHeads, c.head_dim});
  host.value = TensorRef(const_cast<uint8_t*>(value_bytes.data()), c.input, {kTokens, kHeads, c.head_dim});
  host.slot_mapping = TensorRef(slots.data(), DType::kInt64, {kTokens});
  if (c.rope) {
    host.positions = TensorRef(positions.data(), DType::kInt32, {kTokens});
    host.rope.cos_sin = TensorRef(const_cast<float*>(table.data()), DType::kFloat32, {4096, c.head_dim});
  }
  expect_write_matches_reference(cache, host);
}

TEST(CacheWrite, BitExactWithReferenceForEveryFormat) {
  FP8KV_REQUIRE_GPU();
  const DType storages[] = {DType::kBFloat16, DType::kFloat16, DType::kFp8E4M3, DType::kFp8E5M2};
  const ScaleGranularity grans[] = {ScaleGranularity::kPerTensor, ScaleGranularity::kPerHead,
                                    ScaleGranularity::kPerToken};
  for (DType storage : storages) {
    for (ScaleGranularity g : grans) {
      if (!is_fp8(storage) && g != ScaleGranularity::kPerTensor) continue;  // 16-bit storage has no scales
      for (int d : {64, 128, 256}) {
        for (DType input : {DType::kBFloat16, DType::kFloat16}) {
          for (bool rope : {false, true}) {
            for (int block_size : {16, 32}) run_write_case({storage, g, d, input, rope, block_size});
          }
        }
      }
    }
  }
}

// Infinite and NaN inputs are stored as the reference defines them (scales.h): with static scales
// an infinity saturates to +-max and a NaN input (of either sign) becomes +NaN; with per-token scales an
// infinity makes the row's scale infinite, its finite values zero and itself inf / inf = +NaN, the
// same bytes on both sides (x86 alone would give that NaN a negative sign).
TEST(CacheWrite, NonFiniteInputsMatchTheReference) {
  FP8KV_REQUIRE_GPU();
  constexpr int kHeads = 2, kD = 64, kTokens = 5;
  for (DType storage : {DType::kFp8E4M3, DType::kFp8E5M2}) {
    for (ScaleGranularity g : {ScaleGranularity::kPerTensor, ScaleGranularity::kPerToken}) {
      for (DType input : {DType::kFloat16, DType::kBFloat16}) {
        SCOPED_TRACE(std::string(dtype_name(storage)) + "/" + testing::short_name(g) + "/" + dtype_name(input));
        const PagedLayout layout = paged_layout(storage, kHeads, 16, kD);
        const std::vector<float> key = testing::random_normal(static_cast<size_t>(kTokens) * kHeads * kD, testing::test_seed());
        const std::vector<float> value = testing::random_normal(key.size(), testing::test_seed());
        std::vector<uint8_t> kb = input == DType::kFloat16 ? to_bytes<Fp16>(key) : to_bytes<Bf16>(key);
        std::vector<uint8_t> vb = input == DType::kFloat16 ? to_bytes<Fp16>(value) : to_bytes<Bf16>(value);
        const bool fp16 = input == DType::kFloat16;
        const uint16_t inf = fp16 ? 0x7C00 : 0x7F80, nan = fp16 ? 0x7E00 : 0x7FC0, sign = 0x8000;
        auto put = [](std::vector<uint8_t>& bytes, int token, int head, int channel, uint16_t bits) {
          const size_t i = (static_cast<size_t>(token) * kHeads + head) * kD + channel;
          bytes[2 * i] = static_cast<uint8_t>(bits & 0xff);
          bytes[2 * i + 1] = static_cast<uint8_t>(bits >> 8);
        };
        put(kb, 0, 0, 3, inf);
        put(kb, 1, 1, 7, inf | sign);
        put(kb, 2, 0, 0, nan);
        put(vb, 2, 1, 63, nan | sign);
        put(vb, 3, 0, 5, inf);
        put(vb, 3, 0, 6, nan | sign);
        const std::vector<int64_t> slots = {0, 17, 5, 30, 9};

        TwinCache cache(layout, 2, storage, g);
        cache.calibrate(key, value);
        cache.fill(0x5A);
        CacheWriteArgs host;
        host.key = TensorRef(kb.data(), input, {kTokens, kHeads, kD});
        host.value = TensorRef(vb.data(), input, {kTokens, kHeads, kD});
        host.slot_mapping = TensorRef(const_cast<int64_t*>(slots.data()), DType::kInt64, {kTokens});
        expect_write_matches_reference(cache, host);
      }
    }
  }
}

TEST(CacheWrite, PartialRotaryDimIsBitExact) {
  FP8KV_REQUIRE_GPU();
  // rotary_dim < head_dim (the channels past it pass through): built by hand from a 64-wide table.
  constexpr int kHeads = 2, kD = 128, kRotary = 64, kTokens = 9, kMaxPos = 128;
  const PagedLayout layout = paged_layout(DType::kFp8E4M3, kHeads, 16, kD);
  std::vector<float> key = testing::random_normal(static_cast<size_t>(kTokens) * kHeads * kD, testing::test_seed());
  std::vector<float> value = testing::random_normal(key.size(), testing::test_seed());
  const std::vector<uint8_t> kb = to_bytes<Bf16>(key), vb = to_bytes<Bf16>(value);
  std::vector<int64_t> slots(kTokens);
  std::iota(slots.begin(), slots.end(), 3);
  std::vector<int32_t> positions(kTokens);
  std::iota(positions.begin(), positions.end(), 100);
  RopeConfig rc;
  rc.rotary_dim = kRotary;
  const std::vector<float> table = build_rope_table(rc, kMaxPos);
  TwinCache cache(layout, 2, DType::kFp8E4M3, ScaleGranularity::kPerToken);
  cache.fill(0);
  CacheWriteArgs host;
  host.key = TensorRef(const_cast<uint8_t*>(kb.data()), DType::kBFloat16, {kTokens, kHeads, kD});
  host.value = TensorRef(const_cast<uint8_t*>(vb.data()), DType::kBFloat16, {kTokens, kHeads, kD});
  host.slot_mapping = TensorRef(slots.data(), DType::kInt64, {kTokens});
  host.positions = TensorRef(positions.data(), DType::kInt32, {kTokens});
  host.rope.cos_sin = TensorRef(const_cast<float*>(table.data()), DType::kFloat32, {kMaxPos, kRotary});
  expect_write_matches_reference(cache, host);
}

TEST(CacheWrite, OutOfRangeSlotIsReportedAndNotWritten) {
  FP8KV_REQUIRE_GPU();
  const PagedLayout layout = paged_layout(DType::kFp8E4M3, 1, 16, 64);
  TwinCache cache(layout, 2, DType::kFp8E4M3, ScaleGranularity::kPerTensor);
  cache.fill(0x11);
  std::vector<float> x = testing::random_normal(2 * 64, testing::test_seed());
  const std::vector<uint8_t> xb = to_bytes<Bf16>(x);
  const std::vector<int64_t> slots = {5, 2 * 16 + 3};  // the second is past the last block
  DeviceBuffer<uint8_t> dx(xb);
  DeviceBuffer<int64_t> ds(slots);
  CacheWriteArgs dev;
  dev.key = TensorRef(dx.get(), DType::kBFloat16, {2, 1, 64}, Device::kCuda);
  dev.value = dev.key;
  dev.slot_mapping = TensorRef(ds.get(), DType::kInt64, {2}, Device::kCuda);
  dev.cache = cache.device_layer();
  cuda::write_kv_cache(dev);
  try {
    cuda::check_errors();
    FAIL() << "expected InvalidArgument for slot_mapping";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "slot_mapping");
  }
  cuda::check_errors();  // the error bit was cleared
  const std::vector<uint8_t> k = cache.dk.download();
  size_t touched = 0;
  for (uint8_t b : k) touched += b != 0x11;
  EXPECT_LE(touched, 64u) << "only the in-range token may be written";
}

TEST(CacheWrite, RejectsBadArguments) {
  FP8KV_REQUIRE_GPU();
  const PagedLayout layout = paged_layout(DType::kFp8E4M3, 2, 16, 128);
  TwinCache cache(layout, 2, DType::kFp8E4M3, ScaleGranularity::kPerTensor);
  DeviceBuffer<uint8_t> dx(4 * 2 * 64 * 2);
  DeviceBuffer<int64_t> ds(4);
  CacheWriteArgs dev;
  dev.key = TensorRef(dx.get(), DType::kBFloat16, {4, 2, 64}, Device::kCuda);  // head_dim 64 != 128
  dev.value = dev.key;
  dev.slot_mapping = TensorRef(ds.get(), DType::kInt64, {4}, Device::kCuda);
  dev.cache = cache.device_layer();
  EXPECT_THROW(cuda::write_kv_cache(dev), InvalidArgument);
  dev.key = TensorRef(dx.get(), DType::kFloat32, {4, 2, 32}, Device::kCuda);  // float32 on the GPU
  EXPECT_THROW(cuda::write_kv_cache(dev), InvalidArgument);
}

}  // namespace
}  // namespace fp8kv
