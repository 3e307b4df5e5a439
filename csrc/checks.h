// Shared input checks for the C++ kernels. Python validates inputs before calling an op (with messages that
// name the user's argument); these checks guard direct torch.ops calls with the same kind of message.
#pragma once
#include <ATen/ATen.h>

namespace fer_kernels {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              ": expected float32 or float64 on CPU, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* shape) {
  TORCH_CHECK(t.dim() == dim, name, ": expected a ", dim, "-d tensor ", shape, ", got shape ", t.sizes());
}

inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", ref_name,
              " has dtype ", ref.scalar_type());
}

}  // namespace fer_kernels
