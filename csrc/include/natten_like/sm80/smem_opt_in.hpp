// Dynamic shared memory of the sm80 kernels' launchers.
#pragma once

#include <cuda_runtime_api.h>

namespace natten_like::sm80 {

// Sets `kernel`'s dynamic shared memory to `bytes`. A block may take more than 48 KB only by opting in, up to the
// GPU's limit: 163 KB on sm80 / sm87, 227 KB on sm90, 99 KB on sm86 / sm89 / sm120. Returns
// cudaErrorInvalidConfiguration when `bytes` exceeds this GPU's limit, so that a caller can tell an instance this GPU
// cannot run from a failed launch.
template <class Kernel>
cudaError_t set_dynamic_smem(Kernel kernel, int bytes) {
  if (bytes > 99 * 1024) {  // what every GPU of the sm80 path allows needs no query
    int device = 0, optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return err;
    if (optin < bytes) return cudaErrorInvalidConfiguration;
  }
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

}  // namespace natten_like::sm80
