// The sticky device error word that kernels set when a device-resident input (slot, block id,
// position, sequence length) is out of range; cuda::check_errors() reads and clears it.
#pragma once

#include <cstdint>

namespace fp8kv::cuda_detail {

// The current device's error word (allocated and zeroed on first use; lives for the process).
uint32_t* device_error_word();

}  // namespace fp8kv::cuda_detail
