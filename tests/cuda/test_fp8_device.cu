// The device conversions of src/cuda/fp8_convert.cuh against the host definitions of fp8.h /
// half.h: the encoder over all 2^32 float bit patterns (both formats), the decoders over every code
// (one code, and four codes of a word in every byte position).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "cuda/fp8_convert.cuh"
#include "gpu_test_utils.h"

namespace fp8kv {
namespace {

using cuda_detail::float2_to_fp8x2;
using testing::DeviceBuffer;

// out[i] = hardware encode of the float whose bits are base + i; pairs go through one cvt x2.
template <typename Fp8>
__global__ void encode_all_kernel(uint32_t base, uint64_t count, uint16_t* out) {
  const uint64_t pair = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (2 * pair >= count) return;
  const float lo = __uint_as_float(base + static_cast<uint32_t>(2 * pair));
  const float hi = __uint_as_float(base + static_cast<uint32_t>(2 * pair + 1));
  out[pair] = float2_to_fp8x2<Fp8>(lo, hi);
}

template <typename Fp8>
__global__ void decode_all_kernel(float* out) {
  const int code = static_cast<int>(threadIdx.x);  // 256 threads
  out[code] = cuda_detail::fp8_to_float<Fp8>(static_cast<uint8_t>(code));
}

// fp8x4_to_half2x2_bits: thread `code` decodes a word whose byte p holds code + 85p (mod 256), so
// every code passes through every byte position; out[4 * code + p] is byte p's value.
template <typename Fp8>
__global__ void decode_words_kernel(float* out) {
  const uint32_t code = threadIdx.x;  // 256 threads
  uint32_t word = 0;
  for (uint32_t p = 0; p < 4; ++p) word |= ((code + 85 * p) & 0xffu) << (8 * p);
  uint32_t lo = 0, hi = 0;
  cuda_detail::fp8x4_to_half2x2_bits<Fp8>(word, lo, hi);
  const float2 a = cuda_detail::half2_to_float2(lo);
  const float2 b = cuda_detail::half2_to_float2(hi);
  out[4 * code + 0] = a.x;
  out[4 * code + 1] = a.y;
  out[4 * code + 2] = b.x;
  out[4 * code + 3] = b.y;
}

// StorageTraits::unpack over every 16-bit pattern (bf16 / fp16), 8 per thread.
template <typename T>
__global__ void unpack16_all_kernel(float* out) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);  // 8192 threads
  uint32_t w[4];
  for (int i = 0; i < 4; ++i) {
    w[i] = static_cast<uint32_t>(8 * t + 2 * i) | (static_cast<uint32_t>(8 * t + 2 * i + 1) << 16);
  }
  float f[8];
  cuda_detail::StorageTraits<T>::unpack(make_uint4(w[0], w[1], w[2], w[3]), f);
  for (int i = 0; i < 8; ++i) out[8 * t + i] = f[i];
}

bool same_float(float a, float b) { return float_bits(a) == float_bits(b) || (a != a && b != b); }

template <typename Fp8>
void check_encoder_exhaustive() {
  // 2^28 floats per chunk: 128 MiB of codes back per launch, checked on the host by every core.
  constexpr uint64_t kChunk = uint64_t{1} << 28;
  DeviceBuffer<uint16_t> device(kChunk / 2);
  uint16_t* host = nullptr;
  FP8KV_CUDA_CHECK(cudaMallocHost(&host, kChunk));
  const unsigned threads = std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
  std::atomic<uint64_t> mismatches{0};
  std::atomic<uint64_t> first_bad{~uint64_t{0}};
  for (uint64_t base = 0; base < (uint64_t{1} << 32); base += kChunk) {
    encode_all_kernel<Fp8><<<static_cast<unsigned>(kChunk / 2 / 256), 256>>>(static_cast<uint32_t>(base), kChunk,
                                                                              device.get());
    FP8KV_CUDA_CHECK_LAUNCH();
    FP8KV_CUDA_CHECK(cudaMemcpy(host, device.get(), kChunk, cudaMemcpyDeviceToHost));
    const uint8_t* codes = reinterpret_cast<const uint8_t*>(host);
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        uint64_t bad = 0;
        for (uint64_t i = t; i < kChunk; i += threads) {
          const uint32_t bits = static_cast<uint32_t>(base + i);
          if (codes[i] != Fp8::from_float(bits_float(bits)).bits) {
            if (bad++ == 0) {
              uint64_t expected = first_bad.load();
              while (bits < expected && !first_bad.compare_exchange_weak(expected, bits)) {
              }
            }
          }
        }
        mismatches += bad;
      });
    }
    for (auto& th : pool) th.join();
  }
  FP8KV_CUDA_CHECK(cudaFreeHost(host));
  EXPECT_EQ(mismatches.load(), 0u) << "first mismatching float bits 0x" << std::hex << first_bad.load();
}

TEST(Fp8Device, E4M3EncoderMatchesHostForAllFloats) {
  FP8KV_REQUIRE_GPU();
  check_encoder_exhaustive<Fp8E4M3>();
}

TEST(Fp8Device, E5M2EncoderMatchesHostForAllFloats) {
  FP8KV_REQUIRE_GPU();
  check_encoder_exhaustive<Fp8E5M2>();
}

template <typename Fp8>
void check_decoder() {
  DeviceBuffer<float> out(256);
  out.poison();
  decode_all_kernel<Fp8><<<1, 256>>>(out.get());
  FP8KV_CUDA_CHECK_LAUNCH();
  const std::vector<float> got = out.download();
  for (int code = 0; code < 256; ++code) {
    const float want = Fp8{static_cast<uint8_t>(code)}.to_float();
    EXPECT_TRUE(same_float(got[static_cast<size_t>(code)], want))
        << "code 0x" << std::hex << code << ": device " << got[static_cast<size_t>(code)] << ", host " << want;
  }
  DeviceBuffer<float> words(4 * 256);
  words.poison();
  decode_words_kernel<Fp8><<<1, 256>>>(words.get());
  FP8KV_CUDA_CHECK_LAUNCH();
  const std::vector<float> got_words = words.download();
  for (int code = 0; code < 256; ++code) {
    for (int p = 0; p < 4; ++p) {
      const uint8_t byte = static_cast<uint8_t>((code + 85 * p) & 0xff);
      const float want = Fp8{byte}.to_float();
      const float value = got_words[static_cast<size_t>(4 * code + p)];
      EXPECT_TRUE(same_float(value, want)) << "code 0x" << std::hex << int{byte} << " at byte " << p
                                           << " of a word: device " << value << ", host " << want;
    }
  }
}

TEST(Fp8Device, E4M3DecoderMatchesHostForAllCodes) {
  FP8KV_REQUIRE_GPU();
  check_decoder<Fp8E4M3>();
}

TEST(Fp8Device, E5M2DecoderMatchesHostForAllCodes) {
  FP8KV_REQUIRE_GPU();
  check_decoder<Fp8E5M2>();
}

template <typename T>
void check_unpack16() {
  DeviceBuffer<float> out(65536);
  out.poison();
  unpack16_all_kernel<T><<<32, 256>>>(out.get());
  FP8KV_CUDA_CHECK_LAUNCH();
  const std::vector<float> got = out.download();
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float want = T{static_cast<uint16_t>(bits)}.to_float();
    ASSERT_TRUE(same_float(got[bits], want)) << "bits 0x" << std::hex << bits;
  }
}

TEST(Fp8Device, Bf16UnpackMatchesHostForAllPatterns) {
  FP8KV_REQUIRE_GPU();
  check_unpack16<Bf16>();
}

TEST(Fp8Device, Fp16UnpackMatchesHostForAllPatterns) {
  FP8KV_REQUIRE_GPU();
  check_unpack16<Fp16>();
}

}  // namespace
}  // namespace fp8kv
