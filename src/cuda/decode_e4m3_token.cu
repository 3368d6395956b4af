// Decode kernels for Fp8E4M3 storage with per-token scales (all head dims and query-head groups).
#include "cuda/decode.cuh"

namespace fp8kv::cuda_detail {
template void paged_decode_op<Fp8E4M3, true>(const DecodeParams*, int, int, dim3, bool, cudaStream_t, int*);
}  // namespace fp8kv::cuda_detail
