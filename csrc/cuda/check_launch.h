// The CUDA bindings' check of a launcher's result (the launchers return cudaGetLastError()).
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

namespace fer_kernels {

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA error: ", cudaGetErrorString(err));
}

}  // namespace fer_kernels
