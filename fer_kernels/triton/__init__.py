"""Triton kernels, one module per op family. Imported lazily by fer_kernels.ops (triton is optional)."""
