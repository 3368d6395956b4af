// Instantiations of the prefill kernel for fp8, head dim 64 (one file per pair keeps each nvcc job small).
#include "cuda/prefill_sm90/launch.cuh"

namespace fp8kv::cuda::sm90 {
template void launch_prefill<PrefillTraits<ElementE4M3, 64, false>>(const PrefillParams&, int, cudaStream_t);
template void launch_prefill<PrefillTraits<ElementE4M3, 64, true>>(const PrefillParams&, int, cudaStream_t);
template void launch_prefill<PrefillTraits<ElementE4M3, 64, false, 128, 3>>(const PrefillParams&, int, cudaStream_t);
}  // namespace fp8kv::cuda::sm90
