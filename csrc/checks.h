// The checks the C++ kernels make on their arguments: cheap, and only what guards their memory accesses (ranks, the
// sizes they index with, device, dtype, list lengths). Python validates every public call first, with messages that
// name the user's argument (fer_kernels/ops/*.py, the _check* functions); these checks stop a direct torch.ops call
// with inconsistent arguments before a kernel reads or writes out of bounds. The checks of an op family with a CUDA
// binding are in csrc/<op>_checks.h, shared by its CPU kernels and that binding; dense_block, CPU only, keeps its
// own in csrc/cpu/dense_block.cpp.
#pragma once
#include <ATen/ATen.h>

namespace fer_kernels {

// t lives on `device` and is float32 or float64, the dtypes the CPU and CUDA kernels are built for.
inline void check_kernel_tensor(const at::Tensor& t, const char* name, at::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, name, ": expected a ", device, " tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              ": expected float32 or float64 (the ", device, " kernels' dtypes), got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* shape) {
  TORCH_CHECK(t.dim() == dim, name, ": expected a ", dim, "-d tensor ", shape, ", got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device());
}

// t has ref's device and dtype.
inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  check_same_device(t, ref, name, ref_name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", ref_name,
              " has dtype ", ref.scalar_type());
}

// t has ref's device and dtype and exactly the sizes `sizes` (`shape` names them in the message).
inline void check_like(const at::Tensor& t, const at::Tensor& ref, at::IntArrayRef sizes, const char* name,
                       const char* ref_name, const char* shape) {
  check_same(t, ref, name, ref_name);
  TORCH_CHECK(t.sizes() == sizes, name, ": expected shape ", sizes, " = ", shape, ", got ", t.sizes());
}

}  // namespace fer_kernels
