// Decode kernels for Fp16 storage (all head dims and query-head groups).
#include "cuda/decode.cuh"

namespace fp8kv::cuda_detail {
template void paged_decode_op<Fp16, false>(const DecodeParams*, int, int, dim3, bool, cudaStream_t, int*);
}  // namespace fp8kv::cuda_detail
