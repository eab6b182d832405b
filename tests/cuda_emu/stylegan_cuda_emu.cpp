// csrc/cuda/stylegan_cuda.cu compiled as host C++ (see leo_cuda_emulate.h); registers its compiled ops
// as torch.ops.leo_stylegan_cuda_emu._* on CPU tensors, and _launched_kernels(clear).
#define LEO_CUDA_EMULATE 1
#include "../../csrc/cuda/stylegan_cuda.cu"

TORCH_LIBRARY_FRAGMENT(leo_stylegan_cuda_emu, m) {
  m.def("_launched_kernels", &leo_emu::take_launched_kernels);
}
