// Launchers of the bilinear CUDA kernels (pool and fused classifier, forward and backward). Plain
// C++/CUDA-runtime interface: no torch types, so the kernel file compiles with nvcc alone (make cuda-check);
// bilinear_binding.cpp adapts torch tensors. T is float or double. All pointers are contiguous device memory:
// a (N, Ca, L), b (N, Cb, L), z (N, Ca*Cb), weight (K, Ca*Cb), logits (N, K), norms (N).
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace fer_kernels {
namespace cuda {

// z = s / max(||s||, 1e-12) (or s), s = sign(Y) sqrt(|Y| + eps) (or Y), Y = A B^T (/ L); norms = ||s||.
// workspace: n elements.
template <typename T>
cudaError_t bilinear_pool_forward(const T* a, const T* b, T* z, T* norms, T* workspace, int64_t n, int64_t ca,
                                  int64_t cb, int64_t l, double eps, bool signed_sqrt, bool l2_normalize, bool mean,
                                  cudaStream_t stream);

// grad_a = dY B, grad_b = dY^T A with dY = (dz - z <z,dz>) / d * 0.5 / |s| (s = z d), read from the saved z:
// no buffer of size N*Ca*Cb. workspace: 3 n elements.
template <typename T>
cudaError_t bilinear_pool_backward(const T* grad_z, const T* a, const T* b, const T* z, const T* norms, T* grad_a,
                                   T* grad_b, T* workspace, int64_t n, int64_t ca, int64_t cb, int64_t l,
                                   bool signed_sqrt, bool l2_normalize, bool mean, cudaStream_t stream);

// logits = (W s) / max(||s||, 1e-12) + bias without writing s; norms = ||s||. bias may be null.
// workspace: n * (k + 1) elements.
template <typename T>
cudaError_t bilinear_classifier_forward(const T* a, const T* b, const T* weight, const T* bias, T* logits, T* norms,
                                        T* workspace, int64_t n, int64_t ca, int64_t cb, int64_t l, int64_t k,
                                        double eps, cudaStream_t stream);

// Gradients of the classifier, recomputing Y tiles; <z, dz> = sum_k dl_k (logits_k - bias_k). bias may be null;
// grad_bias (k) is always written. workspace: 2 n elements.
template <typename T>
cudaError_t bilinear_classifier_backward(const T* grad_logits, const T* a, const T* b, const T* weight,
                                         const T* bias, const T* norms, const T* logits, T* grad_a, T* grad_b,
                                         T* grad_weight, T* grad_bias, T* workspace, int64_t n, int64_t ca,
                                         int64_t cb, int64_t l, int64_t k, double eps, cudaStream_t stream);

}  // namespace cuda
}  // namespace fer_kernels
