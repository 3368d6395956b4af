// exp2 on the FMA pipes (softmax.cuh uses it for part of the 256-key prefill kernel's
// exponentials). Device code only; no CUTLASS, so that tests/cuda can check it on its own.
#pragma once

namespace fp8kv::cuda::sm90 {

// The lower clamp of x (below): exp2 of anything at or below -kPolyExpClamp comes out as exactly +0.
constexpr float kPolyExpClamp = 127.0f;

// exp2(x) for x <= 0 on the FMA pipes instead of the MUFU unit (FlashAttention-4's offload, here for
// Hopper's FP8 prefill, where the MUFU unit runs at an eighth of the FP32 rate). `y` =
// clamp(-x / 127, 0, 1), the form an FFMA with saturation computes from S in the instruction that
// would otherwise compute x, so that -inf (masked) and very small values land on -127 without a
// compare. With n = round(x) and f = x - n in [-1/2, 1/2], 2^f is a cubic (relative error 1.0e-4,
// exact at f = 0; E4M3 rounds P by up to 6.25%) and 2^n goes into the exponent field by an integer
// add. At x = -127 that gives exactly +0 (1.0's exponent field minus 127), as exp2 does for a
// masked key: the per-token V scales (kernel.cuh) leave out keys whose P is 0. Near -127 it gives a
// denormal instead of ~2^-127.
__device__ __forceinline__ float poly_exp2_of_clamped(float y) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float t = fmaf(y, -kPolyExpClamp, kRound);
  const float n = t - kRound;
  const float f = fmaf(y, -kPolyExpClamp, -n);
  float p = fmaf(f, 0.05500892549753189f, 0.2422109842300415f);
  p = fmaf(p, f, 0.6932829022407532f);
  p = fmaf(p, f, 1.0f);
  return __uint_as_float(__float_as_uint(p) + (__float_as_uint(t) << 23));
}

__device__ __forceinline__ float fma_saturate(float a, float b, float c) {
  float y;
  asm("fma.rn.sat.f32 %0, %1, %2, %3;" : "=f"(y) : "f"(a), "f"(b), "f"(c));
  return y;
}

// exp2(s * scale - base) for s * scale <= base (and s = -inf), given the operands of the saturating
// FFMA that clamps it: scale_c = -scale / kPolyExpClamp and base_c = base / kPolyExpClamp.
__device__ __forceinline__ float poly_exp2(float s, float scale_c, float base_c) {
  return poly_exp2_of_clamped(fma_saturate(s, scale_c, base_c));
}

}  // namespace fp8kv::cuda::sm90
