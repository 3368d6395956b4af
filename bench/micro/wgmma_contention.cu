// Micro-benchmark: does one warpgroup's wgmma stream slow another warpgroup's CUDA-core work on the
// same SM? It asks what the FP8 prefill kernel's ping-pong schedule relies on: that one consumer
// warpgroup's softmax runs at full speed while the other one's wgmmas run. Warpgroup 0 runs a
// softmax-like stream (row max over 64 values per thread, a quad shuffle, 64 FFMA + ex2 + FADD) and
// times it with clock64; warpgroup 1 idles, streams SS QGMMA 64x128x32 (A and B from shared memory,
// the accumulators in its registers), or streams RS QGMMA (A from registers), one per SM.
//
// Build and run on an H100 (from the repository root, CUTLASS headers in .deps as setup.sh puts them):
//   nvcc -std=c++17 -O3 -DFP8KV_WITH_CUDA=1 -Iinclude -Isrc \
//     -isystem=.deps/cutlass_wheel/cutlass_library/source/include --expt-relaxed-constexpr \
//     -gencode=arch=compute_90a,code=sm_90a -o /tmp/wgmma_contention bench/micro/wgmma_contention.cu
//   /tmp/wgmma_contention
// Measured (NVIDIA H100 80GB HBM3, 2026-11-25 ~03:03 UTC, cycles per 64-element step of one warp,
// two runs identical to 0.1%): with ex2 783 alone, 1064 beside SS wgmmas, 1167 beside RS wgmmas;
// without ex2 428, 508, 586.
#include <cstdio>
#include <cuda_runtime.h>
#include "cuda/prefill_sm90/sm90_primitives.cuh"
using namespace fp8kv::cuda::sm90;
using SS = cute::SM90::GMMA::MMA_64x128x32_F32E4M3E4M3_SS_TN<>;
using RS = cute::SM90::GMMA::MMA_64x128x32_F32E4M3E4M3_RS_TN<>;

template <int kMode, bool kMufu>  // kMode 0 idle, 1 SS, 2 RS
__global__ void __launch_bounds__(256, 1) contend(float* out, unsigned long long* cycles, int iters, int gemms) {
  extern __shared__ __align__(1024) uint8_t smem[];
  const int wg = threadIdx.x / 128;
  for (int i = threadIdx.x; i < 32768 / 4; i += 256) reinterpret_cast<uint32_t*>(smem)[i] = 0x38383838u;
  __syncthreads();
  if (wg == 1) {
    if constexpr (kMode == 0) return;
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    const uint64_t da = make_smem_desc(smem, Swizzle::k128B, 16, 1024);
    const uint64_t db = make_smem_desc(smem + 8192, Swizzle::k128B, 16, 1024);
    uint32_t a[4] = {0x38383838u, 0x38383838u, 0x38383838u, 0x38383838u};
    // A fixed count, the same in every warp (a loop exit that differed between the warps of the
    // warpgroup would leave a wgmma half-issued: illegal instruction); it outlasts warpgroup 0.
    for (int g = 0; g < gemms; ++g) {
      fence_registers(acc);
      cute::warpgroup_arrive();
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if constexpr (kMode == 1) gmma<SS>(acc, true, desc_advance(da, 32 * k), desc_advance(db, 32 * k));
        else gmma<RS>(acc, true, a[0], a[1], a[2], a[3], desc_advance(db, 32 * k));
      }
      cute::warpgroup_commit_batch();
      cute::warpgroup_wait<0>();
      fence_registers(acc);
    }
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 64; ++i) s += acc[i];
    if (s == 12345.f) out[threadIdx.x] = s;
    return;
  }
  // WG0: softmax-like work on 64 values per thread.
  float x[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) x[i] = 0.001f * (threadIdx.x + i);
  float acc = 0.f;
  __nanosleep(2000);  // let WG1 start streaming
  const unsigned long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
    float m0 = x[0], m1 = x[1], m2 = x[2], m3 = x[3];
#pragma unroll
    for (int i = 4; i < 64; i += 4) {
      m0 = fmaxf(m0, x[i]); m1 = fmaxf(m1, x[i + 1]); m2 = fmaxf(m2, x[i + 2]); m3 = fmaxf(m3, x[i + 3]);
    }
    float m = fmaxf(fmaxf(m0, m1), fmaxf(m2, m3));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma unroll
    for (int i = 0; i < 64; i += 4) {
      float y0 = fmaf(x[i], 0.5f, -m), y1 = fmaf(x[i + 1], 0.5f, -m), y2 = fmaf(x[i + 2], 0.5f, -m), y3 = fmaf(x[i + 3], 0.5f, -m);
      if constexpr (kMufu) { y0 = fast_exp2(y0); y1 = fast_exp2(y1); y2 = fast_exp2(y2); y3 = fast_exp2(y3); }
      s0 += y0; s1 += y1; s2 += y2; s3 += y3;
      x[i] = y0 + 0.001f; x[i + 1] = y1 + 0.001f; x[i + 2] = y2 + 0.001f; x[i + 3] = y3 + 0.001f;
    }
    acc += (s0 + s1) + (s2 + s3);
  }
  const unsigned long long t1 = clock64();
  if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
  out[threadIdx.x] = acc;
}

template <int kMode, bool kMufu>
void run(const char* name, int iters) {
  float* out; unsigned long long* cyc;
  cudaMalloc(&out, 256 * 132 * 4); cudaMalloc(&cyc, 132 * 8);
  auto k = contend<kMode, kMufu>;
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 32768);
  k<<<132, 256, 32768>>>(out, cyc, iters, iters * 8);
  cudaError_t e = cudaDeviceSynchronize();
  unsigned long long h[132]; cudaMemcpy(h, cyc, sizeof(h), cudaMemcpyDeviceToHost);
  unsigned long long s = 0; for (int i = 0; i < 132; ++i) s += h[i];
  printf("%-28s %s cycles/iter %.1f\n", name, cudaGetErrorString(e), double(s) / 132 / iters);
  cudaFree(out); cudaFree(cyc);
}
int main() {
  for (int rep = 0; rep < 2; ++rep) {
    run<0, true>("idle, softmax w/ exp", 2000);
    run<1, true>("SS wgmma, softmax w/ exp", 2000);
    run<2, true>("RS wgmma, softmax w/ exp", 2000);
    run<0, false>("idle, softmax no exp", 2000);
    run<1, false>("SS wgmma, softmax no exp", 2000);
    run<2, false>("RS wgmma, softmax no exp", 2000);
  }
}
