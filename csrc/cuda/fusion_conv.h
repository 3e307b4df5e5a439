// Launchers of the fusion_conv CUDA kernels. Plain C++/CUDA-runtime interface: no torch types, so the
// kernel file compiles with nvcc alone (make cuda-check); fusion_conv_binding.cpp adapts torch tensors.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace fer_kernels {
namespace cuda {

constexpr int kMaxFusionInputs = 8;

// One contiguous (N, C_i, H, W) input of the concatenation.
template <typename T>
struct FusionInputs {
  const T* ptr[kMaxFusionInputs];
  int64_t channels[kMaxFusionInputs];
  int num;
};

// pooled[n, off_i + c, ho, wo] = mean over the p x p window of xs[i][n, c, ...] (AvgPool2d floor semantics):
// the pool-first half of the fusion conv; the 1x1 conv then runs as a GEMM on p^2 fewer pixels.
template <typename T>
cudaError_t fusion_pool_concat(const FusionInputs<T>& xs, T* pooled, int64_t n, int64_t h, int64_t w, int p,
                               cudaStream_t stream);

// grad_x_i[n, c, y, x] = grad_pooled[n, off_i + c, y / p, x / p] / p^2 inside the pooled area, 0 outside.
template <typename T>
cudaError_t fusion_pool_concat_backward(const T* grad_pooled, T* const* grad_xs, const int64_t* channels,
                                        int num, int64_t n, int64_t h, int64_t w, int p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fer_kernels
