// Decode kernels for Fp8E5M2 storage with per-tensor or per-head scales (all head dims and
// query-head groups).
#include "cuda/decode.cuh"

namespace fp8kv::cuda_detail {
template void paged_decode_op<Fp8E5M2, false>(const DecodeParams*, int, int, dim3, bool, cudaStream_t, int*);
}  // namespace fp8kv::cuda_detail
