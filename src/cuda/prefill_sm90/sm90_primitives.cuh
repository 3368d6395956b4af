// Small Hopper building blocks used by every role of the prefill kernel: shared-memory matrix
// descriptors for wgmma, the swizzled address of an element in a TMA/wgmma tile, the wgmma
// instructions applied to register arrays, and the packs used for P.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/arch/mma_sm90_desc.hpp>
#include <cute/arch/mma_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

namespace fp8kv::cuda::sm90 {

using Barrier = cutlass::arch::ClusterTransactionBarrier;

// Swizzle widths of the canonical wgmma layouts: a tile row of `bytes` bytes (along K for K-major,
// along M/N for MN-major) is split into 16-byte chunks whose index is XOR-ed with the row index
// inside an 8-row atom. TMA writes the same pattern when its tensor map names the same swizzle.
enum class Swizzle : int { k64B = 64, k128B = 128 };

// The wgmma descriptor's layout-type field (bits 62-63).
__device__ __forceinline__ uint64_t swizzle_code(Swizzle s) { return s == Swizzle::k128B ? 1ull : 2ull; }

// Descriptor of a tile in shared memory. `lbo`/`sbo` in bytes: for K-major swizzled tiles only SBO
// matters (the distance between 8-row atoms); for MN-major tiles LBO is the distance between
// swizzle-width column blocks along M/N and SBO the distance between groups of 8 K rows.
__device__ __forceinline__ uint64_t make_smem_desc(const void* smem, Swizzle s, uint32_t lbo, uint32_t sbo) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (swizzle_code(s) << 62);
}

// The descriptor of the tile `bytes` further on in shared memory. The start address field is
// address >> 4 in the low 14 bits and shared memory ends below 2^18 bytes, so the sum never
// carries out of it: one 32-bit add instead of rebuilding the descriptor (five uniform-datapath
// instructions, eight descriptors per loop turn).
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) {
  return (desc & 0xFFFFFFFF00000000ull) | (static_cast<uint32_t>(desc) + (bytes >> 4));
}

// Byte offset of (row, byte-in-row) in a tile whose rows are `width` bytes (= swizzle width) and
// which starts at a 1024-byte-aligned address: Swizzle<3,4,3> (128B) or Swizzle<2,4,3> (64B).
template <Swizzle kSwizzle>
__device__ __forceinline__ uint32_t swizzled_offset(uint32_t row, uint32_t byte) {
  constexpr uint32_t kWidth = static_cast<uint32_t>(kSwizzle);
  const uint32_t linear = row * kWidth + byte;
  constexpr uint32_t kMask = kSwizzle == Swizzle::k128B ? 0x7u : 0x3u;
  return linear ^ (((linear >> 7) & kMask) << 4);
}

// Calls a CuTe GMMA atom's fma with the accumulator given as an array: its first registers, as
// many as the atom has (the 256-key prefill kernel accumulates a 64-register P.V product in the
// first half of S's 128).
template <class Atom, int N, class... Front, size_t... I>
__device__ __forceinline__ void gmma_call(float (&d)[N], cute::SM90::GMMA::ScaleOut scale_d, std::index_sequence<I...>,
                                          const Front&... front) {
  Atom::fma(front..., d[I]..., scale_d);
}

template <class Atom, int N, class... Front>
__device__ __forceinline__ void gmma(float (&d)[N], bool accumulate, const Front&... front) {
  constexpr size_t kAccumulators = std::extent_v<typename Atom::CRegisters>;
  static_assert(kAccumulators <= N, "the atom's accumulator fits the array");
  gmma_call<Atom>(d, accumulate ? cute::SM90::GMMA::ScaleOut::One : cute::SM90::GMMA::ScaleOut::Zero,
                  std::make_index_sequence<kAccumulators>{}, front...);
}

// Keeps the compiler from moving register reads/writes across wgmma issue/wait points.
template <int N>
__device__ __forceinline__ void fence_registers(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) cute::warpgroup_fence_operand(d[i]);
}
template <int N>
__device__ __forceinline__ void fence_registers(uint32_t (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) cute::warpgroup_fence_operand(d[i]);
}

// Four probabilities to four E4M3 codes (a in the low byte) for the P.V product: two
// `cvt.rn.satfinite.e4m3x2.f32` merged into one register, the rounding of fp8_convert.cuh without
// its NaN-sign fix-up. That fix-up (a compare, shift, or and select per element, so that a stored
// -NaN keeps its sign bit) matters for cache contents compared bit for bit, not for P: a NaN is
// still a NaN in the product. It was 290 of the 817 instructions of a consumer warp's
// unmasked two-level loop turn (cuobjdump --dump-sass, d128).
__device__ __forceinline__ uint32_t pack_e4m3x4(float a, float b, float c, float d) {
  uint32_t packed;
  // PTX puts the first source operand in the upper byte of each pair.
  asm("{\n"
      ".reg .b16 lo, hi;\n"
      "cvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\n"
      "cvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n"
      "mov.b32 %0, {lo, hi};\n"
      "}\n"
      : "=r"(packed)
      : "f"(a), "f"(b), "f"(c), "f"(d));
  return packed;
}
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Generic-proxy shared-memory writes that wgmma or TMA read next must be fenced first.
__device__ __forceinline__ void fence_view_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace fp8kv::cuda::sm90
