// Torch binding of the bilinear CUDA kernels (csrc/cuda/bilinear.cu): checks, allocation, stream, dispatch.
// Compiled only when torch has CUDA and nvcc is found (setup.py). float32 and float64; the Triton backend covers
// float16/bfloat16 on GPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/bilinear.h"

namespace fer_kernels {
namespace {

void check_cuda_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              ": the cuda backend runs float32 or float64 (use the triton backend for float16/bfloat16), got ",
              t.scalar_type());
}

void check_ab_cuda(const at::Tensor& a, const at::Tensor& b) {
  check_cuda_float(a, "a");
  check_dim(a, 4, "a", "(N, Ca, H, W)");
  check_dim(b, 4, "b", "(N, Cb, H, W)");
  check_same(b, a, "b", "a");
  TORCH_CHECK(a.size(0) == b.size(0) && a.size(2) == b.size(2) && a.size(3) == b.size(3),
              "b: batch and spatial sizes must match a (N=", a.size(0), ", H=", a.size(2), ", W=", a.size(3),
              "), got shape ", b.sizes());
}

void check_classifier_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias) {
  check_ab_cuda(a, b);
  check_dim(weight, 2, "weight", "(K, Ca*Cb)");
  check_same(weight, a, "weight", "a");
  TORCH_CHECK(weight.size(1) == a.size(1) * b.size(1), "weight: expected shape (K, ", a.size(1) * b.size(1),
              ") = (K, Ca*Cb), got ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    check_same(*bias, a, "bias", "a");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias: expected shape (", weight.size(0),
                ",), got ", bias->sizes());
  }
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA error: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> bilinear_pool_cuda(const at::Tensor& a, const at::Tensor& b, double eps,
                                                      bool signed_sqrt, bool l2_normalize, bool mean) {
  check_ab_cuda(a, b);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), ca = a.size(1), cb = b.size(1), l = a.size(2) * a.size(3);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor z = at::empty({n, ca * cb}, a.options());
  at::Tensor norms = at::empty({n}, a.options());
  at::Tensor ws = at::empty({n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_pool_cuda", [&] {
    check_launch(cuda::bilinear_pool_forward<scalar_t>(ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(),
                                                       z.data_ptr<scalar_t>(), norms.data_ptr<scalar_t>(),
                                                       ws.data_ptr<scalar_t>(), n, ca, cb, l, eps, signed_sqrt,
                                                       l2_normalize, mean, c10::cuda::getCurrentCUDAStream().stream()),
                 "bilinear_pool_cuda");
  });
  return {z, norms};
}

std::tuple<at::Tensor, at::Tensor> bilinear_pool_backward_cuda(const at::Tensor& grad_z, const at::Tensor& a,
                                                               const at::Tensor& b, const at::Tensor& z,
                                                               const at::Tensor& norms, double eps,
                                                               bool signed_sqrt, bool l2_normalize, bool mean) {
  (void)eps;  // |s| = sqrt(|Y| + eps) is read back from z
  check_ab_cuda(a, b);
  check_same(grad_z, a, "grad_z", "a");
  check_same(z, a, "z", "a");
  check_same(norms, a, "norms", "a");
  TORCH_CHECK(grad_z.dim() == 2 && grad_z.size(0) == a.size(0) && grad_z.size(1) == a.size(1) * b.size(1),
              "grad_z: expected shape (N, Ca*Cb), got ", grad_z.sizes());
  TORCH_CHECK(z.sizes() == grad_z.sizes(), "z: expected shape (N, Ca*Cb), got ", z.sizes());
  TORCH_CHECK(norms.dim() == 1 && norms.size(0) == a.size(0), "norms: expected shape (N,), got ", norms.sizes());
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), ca = a.size(1), cb = b.size(1), l = a.size(2) * a.size(3);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), gz = grad_z.contiguous(), zc = z.contiguous(),
                   nc = norms.contiguous();
  at::Tensor da = at::empty(a.sizes(), a.options());
  at::Tensor db = at::empty(b.sizes(), b.options());
  at::Tensor ws = at::empty({3 * n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_pool_backward_cuda", [&] {
    check_launch(cuda::bilinear_pool_backward<scalar_t>(gz.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(),
                                                        bc.data_ptr<scalar_t>(), zc.data_ptr<scalar_t>(),
                                                        nc.data_ptr<scalar_t>(), da.data_ptr<scalar_t>(),
                                                        db.data_ptr<scalar_t>(), ws.data_ptr<scalar_t>(), n, ca, cb,
                                                        l, signed_sqrt, l2_normalize, mean,
                                                        c10::cuda::getCurrentCUDAStream().stream()),
                 "bilinear_pool_backward_cuda");
  });
  return {da, db};
}

std::tuple<at::Tensor, at::Tensor> bilinear_classifier_cuda(const at::Tensor& a, const at::Tensor& b,
                                                            const at::Tensor& weight,
                                                            const c10::optional<at::Tensor>& bias, double eps) {
  check_classifier_cuda(a, b, weight, bias);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), ca = a.size(1), cb = b.size(1), l = a.size(2) * a.size(3), k = weight.size(0);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), wc = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bias_c = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor logits = at::empty({n, k}, a.options());
  at::Tensor norms = at::empty({n}, a.options());
  at::Tensor ws = at::empty({n * (k + 1)}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_classifier_cuda", [&] {
    check_launch(cuda::bilinear_classifier_forward<scalar_t>(
                     ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(),
                     has_bias ? bias_c.data_ptr<scalar_t>() : nullptr, logits.data_ptr<scalar_t>(),
                     norms.data_ptr<scalar_t>(), ws.data_ptr<scalar_t>(), n, ca, cb, l, k, eps,
                     c10::cuda::getCurrentCUDAStream().stream()),
                 "bilinear_classifier_cuda");
  });
  return {logits, norms};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilinear_classifier_backward_cuda(
    const at::Tensor& grad_logits, const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& norms, const at::Tensor& logits, double eps) {
  check_classifier_cuda(a, b, weight, bias);
  check_same(grad_logits, a, "grad_logits", "a");
  check_same(norms, a, "norms", "a");
  check_same(logits, a, "logits", "a");
  TORCH_CHECK(grad_logits.dim() == 2 && grad_logits.size(0) == a.size(0) && grad_logits.size(1) == weight.size(0),
              "grad_logits: expected shape (N, K), got ", grad_logits.sizes());
  TORCH_CHECK(logits.sizes() == grad_logits.sizes(), "logits: expected shape (N, K), got ", logits.sizes());
  TORCH_CHECK(norms.dim() == 1 && norms.size(0) == a.size(0), "norms: expected shape (N,), got ", norms.sizes());
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), ca = a.size(1), cb = b.size(1), l = a.size(2) * a.size(3), k = weight.size(0);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), wc = weight.contiguous(), gl = grad_logits.contiguous(),
                   nc = norms.contiguous(), lc = logits.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bias_c = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor da = at::empty(a.sizes(), a.options());
  at::Tensor db = at::empty(b.sizes(), b.options());
  at::Tensor dw = at::empty({k, ca * cb}, a.options());
  at::Tensor dbias = at::empty({k}, a.options());
  at::Tensor ws = at::empty({2 * n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_classifier_backward_cuda", [&] {
    check_launch(cuda::bilinear_classifier_backward<scalar_t>(
                     gl.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(),
                     wc.data_ptr<scalar_t>(), has_bias ? bias_c.data_ptr<scalar_t>() : nullptr,
                     nc.data_ptr<scalar_t>(), lc.data_ptr<scalar_t>(), da.data_ptr<scalar_t>(),
                     db.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>(),
                     ws.data_ptr<scalar_t>(), n, ca, cb, l, k, eps, c10::cuda::getCurrentCUDAStream().stream()),
                 "bilinear_classifier_backward_cuda");
  });
  return {da, db, dw, dbias};
}

}  // namespace
}  // namespace fer_kernels

// Why here: the CUDA kernels of the bilinear ops register beside their binding (CONVENTIONS rule 1).
TORCH_LIBRARY_IMPL(fer_kernels, CUDA, m) {
  m.impl("bilinear_pool", &fer_kernels::bilinear_pool_cuda);
  m.impl("_bilinear_pool_backward", &fer_kernels::bilinear_pool_backward_cuda);
  m.impl("bilinear_classifier", &fer_kernels::bilinear_classifier_cuda);
  m.impl("_bilinear_classifier_backward", &fer_kernels::bilinear_classifier_backward_cuda);
}
