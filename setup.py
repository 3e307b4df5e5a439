"""Builds fer_kernels._C from csrc/.

csrc/fer_kernels.cpp and csrc/cpu/*.cpp are always compiled. csrc/cuda/*.cu (pure CUDA kernels, no torch
headers) and csrc/cuda/*_binding.cpp (their torch bindings) are compiled only when torch has CUDA and nvcc is
found. FER_KERNELS_CUDA=auto|0|1 (1 = fail if CUDA cannot be built); DEBUG=1 builds with -O0 -g.
"""

import glob
import os
import shutil

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    mode = os.environ.get("FER_KERNELS_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"FER_KERNELS_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    ok = torch.version.cuda is not None and CUDA_HOME is not None and (
        shutil.which("nvcc") is not None or os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    )
    if mode == "1" and not ok:
        raise SystemExit("FER_KERNELS_CUDA=1 but torch has no CUDA or nvcc was not found")
    return ok


def _extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    debug = os.environ.get("DEBUG", "0") == "1"
    rel = lambda paths: sorted(os.path.relpath(p, HERE) for p in paths)
    sources = rel([os.path.join(HERE, "csrc", "fer_kernels.cpp")])
    sources += rel(glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp")))
    cxx = ["-O0", "-g"] if debug else ["-O3", "-march=native", "-ffp-contract=fast"]
    cxx += ["-fopenmp"]
    include_dirs = [os.path.join(HERE, "csrc")]
    if _want_cuda():
        sources += rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
        sources += rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*_binding.cpp")))
        nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "--use_fast_math", "-lineinfo"]
        return [
            CUDAExtension(
                "fer_kernels._C",
                sources,
                include_dirs=include_dirs,
                define_macros=[("FER_KERNELS_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx + ["-DFER_KERNELS_WITH_CUDA=1"], "nvcc": nvcc},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "fer_kernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]


def main():
    from torch.utils.cpp_extension import BuildExtension

    setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})


if __name__ == "__main__":
    main()
