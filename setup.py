"""Build leo_kernels._C: C++/OpenMP CPU kernels always, CUDA kernels when possible.

Environment switches (same spirit as torchvision / flash-attn):
  LEO_FORCE_CUDA=1   build the CUDA part even if no GPU is visible (needs a CUDA torch + nvcc)
  LEO_SKIP_CUDA=1    never build the CUDA part
  MAX_JOBS=N         parallel compile jobs (ninja)
  TORCH_CUDA_ARCH_LIST  CUDA archs; default "8.0;9.0" (sm_90 always included)
The package metadata (name, dependencies, extras, the `leo` command) is in pyproject.toml.
Always install with `pip install --no-build-isolation -e .` so the torch already installed is used.
"""
import glob
import os
import sys

from setuptools import setup

try:
    import torch  # the extension is compiled against the installed torch
except ImportError:
    sys.exit("leo: building needs torch: install torch first (e.g. pip install torch==2.13.0), "
             "then run pip install --no-build-isolation -e .")


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _extensions():
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    cpp_sources = sorted(glob.glob(os.path.join(here, "csrc", "**", "*.cpp"), recursive=True))
    cu_sources = sorted(glob.glob(os.path.join(here, "csrc", "cuda", "*.cu")))
    cpp_sources = [os.path.relpath(s, here) for s in cpp_sources]
    cu_sources = [os.path.relpath(s, here) for s in cu_sources]

    torch_has_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    with_cuda = (
        not _flag("LEO_SKIP_CUDA")
        and torch_has_cuda
        and (torch.cuda.is_available() or _flag("LEO_FORCE_CUDA"))
    )
    if _flag("LEO_FORCE_CUDA") and not torch_has_cuda:
        raise RuntimeError("LEO_FORCE_CUDA=1 but this torch has no CUDA or nvcc was not found")

    openmp = ["-fopenmp"]
    cxx = ["-O3", "-std=c++20", "-march=x86-64-v2", *openmp] if os.uname().machine == "x86_64" else ["-O3", "-std=c++20", *openmp]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc = ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
        return [
            CUDAExtension(
                "leo_kernels._C",
                cpp_sources + cu_sources,
                define_macros=[("LEO_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                extra_link_args=openmp,
            )
        ]
    return [
        CppExtension(
            "leo_kernels._C",
            cpp_sources,
            extra_compile_args={"cxx": cxx},
            extra_link_args=openmp,
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
)
