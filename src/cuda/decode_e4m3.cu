// Decode kernels for Fp8E4M3 storage (all head dims and query-head groups).
#include "cuda/decode.cuh"

namespace fp8kv::cuda_detail {
template void launch_paged_decode<Fp8E4M3>(const DecodeParams&, int, int, dim3, cudaStream_t);
}  // namespace fp8kv::cuda_detail
