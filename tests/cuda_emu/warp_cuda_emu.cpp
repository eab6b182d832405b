// csrc/cuda/warp_cuda.cu compiled as host C++ (see leo_cuda_emulate.h); registers the compiled warp
// ops as torch.ops.leo_warp_cuda_emu._* on CPU tensors, and _launched_kernels(clear).
#define LEO_CUDA_EMULATE 1
#include "../../csrc/cuda/warp_cuda.cu"

TORCH_LIBRARY_FRAGMENT(leo_warp_cuda_emu, m) {
  m.def("_launched_kernels", &leo_emu::take_launched_kernels);
}
